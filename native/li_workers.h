/* Persistent worker threads for the recurrent kernels' threads=N batch split.

   A Python thread pool hands a job over in tens of microseconds (GIL, futures);
   a batch-64 LSTM step at H=64 is ~50 us of work. So each threaded kernel owns
   N-1 pthreads: the caller posts a job with one atomic store, runs its own part,
   then waits for the others' "done" flags. After a job a worker polls for the
   next one for a short while (calls come back to back while serving), then
   sleeps on a condition variable: an idle kernel costs no CPU.

   fork(): the child has no worker threads, so li_worker_start compares the pid
   that started them and starts fresh ones (the parent's mutex state is
   discarded, not reused). */
#ifndef LI_WORKERS_H
#define LI_WORKERS_H

#include <pthread.h>
#include <sched.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

typedef int (*li_job_fn)(void *arg);

typedef struct {
    pthread_t thread;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    pid_t pid;      /* the process whose thread this is; 0: not started */
    int sleeping;   /* the worker waits on cv (guarded by mu) */
    int stop;       /* set before posting: the worker exits */
    int posted;     /* atomic: a job (or stop) is waiting */
    int done;       /* atomic: the posted job finished */
    li_job_fn fn;
    void *arg;
    int status;
} li_worker;

/* Polling budgets, in nanoseconds of the monotonic clock (a vDSO call: ~20 ns). A worker
   polls this long after a job before it sleeps; a caller waiting for a worker polls this
   long before it yields its core (on a busy machine the worker may need that core). */
#define LI_WORKER_POLL_NS 50000
#define LI_CALLER_POLL_NS 20000

static inline long long li_now_ns(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (long long)t.tv_sec * 1000000000LL + t.tv_nsec;
}

static inline void li_relax(void) {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#endif
}

static void *li_worker_main(void *self) {
    li_worker *w = (li_worker *)self;
    for (;;) {
        long long until = li_now_ns() + LI_WORKER_POLL_NS;
        int polls = 0;
        while (!__atomic_load_n(&w->posted, __ATOMIC_ACQUIRE)) {
            li_relax();
            if ((++polls & 63) || li_now_ns() < until)
                continue;
            pthread_mutex_lock(&w->mu);
            w->sleeping = 1;
            while (!__atomic_load_n(&w->posted, __ATOMIC_ACQUIRE))
                pthread_cond_wait(&w->cv, &w->mu);
            w->sleeping = 0;
            pthread_mutex_unlock(&w->mu);
        }
        __atomic_store_n(&w->posted, 0, __ATOMIC_RELAXED);
        if (__atomic_load_n(&w->stop, __ATOMIC_ACQUIRE))
            return NULL;
        w->status = w->fn(w->arg);
        __atomic_store_n(&w->done, 1, __ATOMIC_RELEASE);
    }
}

/* Make sure this process has the worker's thread; 0 on success. */
static int li_worker_start(li_worker *w) {
    if (w->pid == getpid())
        return 0;
    memset(w, 0, sizeof *w);
    if (pthread_mutex_init(&w->mu, NULL) != 0)
        return -1;
    if (pthread_cond_init(&w->cv, NULL) != 0)
        return -1;
    if (pthread_create(&w->thread, NULL, li_worker_main, w) != 0)
        return -1;
    w->pid = getpid();
    return 0;
}

static void li_worker_post(li_worker *w, li_job_fn fn, void *arg) {
    w->fn = fn;
    w->arg = arg;
    __atomic_store_n(&w->done, 0, __ATOMIC_RELAXED);
    pthread_mutex_lock(&w->mu);
    __atomic_store_n(&w->posted, 1, __ATOMIC_RELEASE);
    if (w->sleeping)
        pthread_cond_signal(&w->cv);
    pthread_mutex_unlock(&w->mu);
}

/* The posted job's status, once it is done (spins, then yields the core). */
static int li_worker_wait(li_worker *w) {
    long long until = 0;
    int polls = 0;
    while (!__atomic_load_n(&w->done, __ATOMIC_ACQUIRE)) {
        li_relax();
        if (++polls & 63)
            continue;
        if (until == 0)
            until = li_now_ns() + LI_CALLER_POLL_NS;
        else if (li_now_ns() >= until)
            sched_yield();
    }
    return w->status;
}

static void li_worker_stop(li_worker *w) {
    if (w->pid != getpid())
        return;  /* never started here (or started by the parent of a fork) */
    __atomic_store_n(&w->stop, 1, __ATOMIC_RELEASE);
    li_worker_post(w, NULL, NULL);
    pthread_join(w->thread, NULL);
    pthread_cond_destroy(&w->cv);
    pthread_mutex_destroy(&w->mu);
    w->pid = 0;
}

/* A spinning barrier for the parts of a hidden-unit split: they meet after every time
   step (the next step reads every unit of h). Sense by generation count; polls, then
   yields the core like li_worker_wait. */
typedef struct {
    int parties;
    int count;
    int generation;
} li_barrier;

static void li_barrier_wait(li_barrier *b) {
    int generation = __atomic_load_n(&b->generation, __ATOMIC_ACQUIRE);
    if (__atomic_add_fetch(&b->count, 1, __ATOMIC_ACQ_REL) == b->parties) {
        __atomic_store_n(&b->count, 0, __ATOMIC_RELAXED);
        __atomic_store_n(&b->generation, generation + 1, __ATOMIC_RELEASE);
        return;
    }
    long long until = 0;
    int polls = 0;
    while (__atomic_load_n(&b->generation, __ATOMIC_ACQUIRE) == generation) {
        li_relax();
        if (++polls & 63)
            continue;
        if (until == 0)
            until = li_now_ns() + LI_CALLER_POLL_NS;
        else if (li_now_ns() >= until)
            sched_yield();
    }
}

#endif
