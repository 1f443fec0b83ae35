/* Persistent worker threads for the recurrent kernels' threads=N splits.

   A Python thread pool hands a job over in tens of microseconds (GIL, futures),
   as long as a whole small step. So the process keeps N-1 pthreads (li_pool,
   shared by every threaded kernel of this build): the caller posts a job with
   one atomic store, runs its own part, then waits for the others' "done" flags.
   After a job a worker polls for the next one for a short while (calls come back
   to back while serving), then sleeps on a condition variable: idle workers cost
   no CPU.

   fork(): the child has no worker threads, so li_worker_start compares the pid
   that started them and starts fresh ones (the parent's mutex state is
   discarded, not reused). */
#ifndef LI_WORKERS_H
#define LI_WORKERS_H

#include <pthread.h>
#include <sched.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

typedef int (*li_job_fn)(void *arg);

/* Shared between the caller's and the workers' cores: every such structure gets cache lines
   of its own. A worker polls its flags while the caller runs Python between calls, and
   whatever malloc put beside them would bounce between the cores with every write. */
#define LI_LINE 64

static inline size_t li_line_stride(size_t size) {
    return (size + LI_LINE - 1) / LI_LINE * LI_LINE;
}

/* n zeroed items of ``size`` bytes, each starting a cache line (stride li_line_stride(size));
   NULL if out of memory. Free with free(). */
static inline void *li_lines_alloc(size_t n, size_t size) {
    size_t bytes = n * li_line_stride(size);
    void *p = aligned_alloc(LI_LINE, bytes ? bytes : LI_LINE);
    if (p != NULL)
        memset(p, 0, bytes);
    return p;
}

typedef struct {
    pthread_t thread;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    pid_t pid;      /* the process whose thread this is; 0: not started */
    int sleeping;   /* the worker waits on cv (guarded by mu) */
    int posted;     /* atomic: a job is waiting */
    int done;       /* atomic: the posted job finished */
    li_job_fn fn;
    void *arg;
    int status;
} __attribute__((aligned(LI_LINE))) li_worker;

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
#elif defined(__aarch64__) || defined(__arm__)
    __asm__ __volatile__("yield" ::: "memory"); /* ARM's spin-wait hint */
#endif
}

/* Take the posted job: exactly one of the worker and the caller gets it (true) and runs it. */
static inline int li_worker_claim(li_worker *w) {
    int expected = 1;
    return __atomic_compare_exchange_n(&w->posted, &expected, 0, 0, __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE);
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
        if (!li_worker_claim(w))
            continue;  /* the caller ran it itself (li_worker_wait) */
        w->status = w->fn(w->arg);
        __atomic_store_n(&w->done, 1, __ATOMIC_RELEASE);
    }
    return NULL;  /* not reached: a pool worker lives as long as its process */
}

/* Make sure this process (``pid``) has the worker's thread; 0 on success. */
static int li_worker_start(li_worker *w, pid_t pid) {
    if (w->pid == pid)
        return 0;
    memset(w, 0, sizeof *w);
    if (pthread_mutex_init(&w->mu, NULL) != 0)
        return -1;
    if (pthread_cond_init(&w->cv, NULL) != 0)
        return -1;
    if (pthread_create(&w->thread, NULL, li_worker_main, w) != 0)
        return -1;
    w->pid = pid;
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

/* The posted job's status, once it is done (spins, then yields the core). A job its worker
   has not started by the time the caller finished its own part (the worker descheduled on a
   busy machine, or still waking from its condition variable) runs here instead: one core's
   time for the whole beats waiting for the worker's turn on a busy machine. */
static int li_worker_wait(li_worker *w) {
    long long until = 0;
    int polls = 0;
    if (li_worker_claim(w))
        return w->fn(w->arg);
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

/* The process's workers, shared by the kernels: one call holds them at a time. The layers of
   a model run one after another, and each finds the workers the previous one used still
   polling; workers owned by each kernel would leave one kernel's polling beside the next
   one's computing, more busy threads than cores. A call that finds them held (another
   Python thread's call) runs its parts itself, with the same bits. */
#define LI_POOL_MAX 256
static li_worker li_pool[LI_POOL_MAX];
static int li_pool_holder;  /* atomic: pid of the process whose call holds the pool, 0: free */

/* Workers 0 .. n-1 of the pool, their threads started, for the calling thread's call; NULL
   if another call of this process holds them, n > LI_POOL_MAX or a thread can't start. A
   holder's pid from before a fork (the parent's) counts as free. Give back: li_pool_give. */
static li_worker *li_pool_take(int n) {
    pid_t me = getpid();
    int held = __atomic_load_n(&li_pool_holder, __ATOMIC_ACQUIRE);
    if (n < 1 || n > LI_POOL_MAX || held == (int)me)
        return NULL;
    if (!__atomic_compare_exchange_n(&li_pool_holder, &held, (int)me, 0, __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE))
        return NULL;
    for (int i = 0; i < n; i++) {
        if (li_worker_start(&li_pool[i], me) != 0) {
            __atomic_store_n(&li_pool_holder, 0, __ATOMIC_RELEASE);
            return NULL;
        }
    }
    return li_pool;
}

static inline void li_pool_give(void) {
    __atomic_store_n(&li_pool_holder, 0, __ATOMIC_RELEASE);
}

/* A batch split's items [next, end) that its own thread takes first and others may steal
   once theirs are done: each range on a line of its own, so that taking one's own items
   stays on one core (a shared counter would move its line between cores on every claim). */
typedef struct {
    int next;
    int end;
} __attribute__((aligned(LI_LINE))) li_range;

/* The next item of ``r`` (each item handed to exactly one claimant), or -1 when none is left. */
static inline int li_range_claim(li_range *r) {
    int item;
    if (__atomic_load_n(&r->next, __ATOMIC_RELAXED) >= r->end)
        return -1;  /* done: no write, the owner's line stays where it is */
    item = __atomic_fetch_add(&r->next, 1, __ATOMIC_RELAXED);
    return item < r->end ? item : -1;
}

/* The schedule of a hidden-unit split: each thread owns a block of units and runs its
   tasks (per direction: input projection, every step, final state) in order; task i of
   a block may start once task i - 1 of every block is done. ``claimed`` counts a
   block's tasks started, ``done`` those finished: a thread claims a task with a
   compare-and-swap, so a block whose thread is descheduled can be run by another. */
typedef struct {
    int claimed;
    int done;
} __attribute__((aligned(LI_LINE))) li_block;  /* one line per block: the threads poll each other's */

typedef struct {
    int parts;
    li_block *blocks;    /* parts */
    ptrdiff_t *bounds;   /* parts + 1: block b is units [bounds[b], bounds[b + 1]) */
} li_sched;

static inline void li_block_reset(li_block *b) {
    __atomic_store_n(&b->claimed, 0, __ATOMIC_RELAXED);
    __atomic_store_n(&b->done, 0, __ATOMIC_RELAXED);
}

/* Claim task ``task`` of the block (true: the caller runs it). */
static inline int li_block_claim(li_block *b, int task) {
    int expected = task;
    return __atomic_compare_exchange_n(&b->claimed, &expected, task + 1, 0, __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE);
}

static inline void li_block_finish(li_block *b, int done) {
    __atomic_store_n(&b->done, done, __ATOMIC_RELEASE);
}

static inline int li_block_done(li_block *b) {
    return __atomic_load_n(&b->done, __ATOMIC_ACQUIRE);
}

#endif
