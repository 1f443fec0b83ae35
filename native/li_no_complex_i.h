/* numpy's headers pull in complex.h, whose I macro would rename every field called I (Seq.I);
   included after numpy's. */
#undef I
