/*
 * Keeps the built library inside the manylinux_2_28 policy (glibc <= 2.28, GLIBCXX <= 3.4.24,
 * CXXABI <= 1.3.11) when it is compiled on a newer distribution, so that one wheel installs on
 * every system that torch's own manylinux_2_28 wheels install on.
 *
 * A library linked against a new glibc and libstdc++ records the newest version of each function
 * it calls. This file defines, with hidden visibility, every function the core (Rust std, tch's
 * wrapper, torch's headers, our C++) was seen to take from a version newer than the policy; the
 * linker binds all references in the library to these definitions (build.rs links this file whole),
 * and each one calls an entry point that old and new systems both export:
 *
 *   symbol (newest version)              here
 *   dlopen dlsym dlerror dlclose dladdr  the GLIBC_2.2.5 versions (libdl before 2.34, libc after)
 *   (2.34)
 *   pthread_key_create/_delete,          the GLIBC_2.2.5 versions (libpthread before 2.34)
 *   pthread_setspecific (2.34)
 *   exp (2.29)                           exp@GLIBC_2.2.5 (same result; errno handling differs)
 *   stat64 fstat64 (2.33), gettid (2.30) the system calls
 *   __libc_single_threaded (2.32)        0: libstdc++'s inline code always uses atomics
 *   std::__throw_bad_array_new_length    std::__throw_bad_alloc (its base class)
 *   (GLIBCXX 3.4.29)
 *   ostringstream() (3.4.26)             ostringstream(ios_base::out), what it delegates to
 *   stringbuf::str() && (3.4.29)         stringbuf::str() const (a copy instead of a move)
 *   stringbuf::str() const & (3.4.29)    stringbuf::str() const, the same function under its
 *                                        pre-C++20 name (torch 2.13's headers call it inline)
 *   exception_ptr::_M_addref/_M_release  the exception_ptr copy constructor / destructor
 *   (CXXABI 1.3.13)                      (CXXABI 1.3.3), which do exactly that
 *
 * tests/test_install.py checks the built wheel with `auditwheel show`; a new symbol that is too
 * new makes that test name it.
 */
/* OLD(...) takes assembler symbol names (name@VERSION), which are not C: not for clang-format. */
/* clang-format off */
#include <stddef.h>
#include <sys/syscall.h>

#define HIDDEN __attribute__((visibility("hidden")))
#define OLD(local, symbol) __asm__(".symver " #local "," #symbol)

long syscall(long number, ...);

/* glibc */

OLD(icn_dlopen, dlopen@GLIBC_2.2.5);
OLD(icn_dlsym, dlsym@GLIBC_2.2.5);
OLD(icn_dlerror, dlerror@GLIBC_2.2.5);
OLD(icn_dlclose, dlclose@GLIBC_2.2.5);
OLD(icn_dladdr, dladdr@GLIBC_2.2.5);
OLD(icn_pthread_key_create, pthread_key_create@GLIBC_2.2.5);
OLD(icn_pthread_key_delete, pthread_key_delete@GLIBC_2.2.5);
OLD(icn_pthread_setspecific, pthread_setspecific@GLIBC_2.2.5);
OLD(icn_exp, exp@GLIBC_2.2.5);
void *icn_dlopen(const char *file, int mode);
void *icn_dlsym(void *handle, const char *name);
char *icn_dlerror(void);
int icn_dlclose(void *handle);
int icn_dladdr(const void *address, void *info);
int icn_pthread_key_create(unsigned *key, void (*destructor)(void *));
int icn_pthread_key_delete(unsigned key);
int icn_pthread_setspecific(unsigned key, const void *value);
double icn_exp(double x);

HIDDEN void *dlopen(const char *file, int mode) { return icn_dlopen(file, mode); }
HIDDEN void *dlsym(void *handle, const char *name) { return icn_dlsym(handle, name); }
HIDDEN char *dlerror(void) { return icn_dlerror(); }
HIDDEN int dlclose(void *handle) { return icn_dlclose(handle); }
HIDDEN int dladdr(const void *address, void *info) { return icn_dladdr(address, info); }
HIDDEN int pthread_key_create(unsigned *key, void (*destructor)(void *)) {
  return icn_pthread_key_create(key, destructor);
}
HIDDEN int pthread_key_delete(unsigned key) { return icn_pthread_key_delete(key); }
HIDDEN int pthread_setspecific(unsigned key, const void *value) { return icn_pthread_setspecific(key, value); }
HIDDEN double exp(double x) { return icn_exp(x); }

/* x86-64: the kernel's struct stat is glibc's struct stat64; syscall() sets errno. */
HIDDEN int stat64(const char *path, void *buf) { return (int)syscall(SYS_stat, path, buf); }
HIDDEN int fstat64(int fd, void *buf) { return (int)syscall(SYS_fstat, fd, buf); }
HIDDEN int gettid(void) { return (int)syscall(SYS_gettid); }

HIDDEN char __libc_single_threaded = 0;

/* libstdc++ (C++ symbols by their mangled names; `this` and the returned object are pointers) */

void _ZSt17__throw_bad_allocv(void) __attribute__((noreturn));
HIDDEN __attribute__((noreturn)) void _ZSt28__throw_bad_array_new_lengthv(void) { _ZSt17__throw_bad_allocv(); }

enum { IOS_OUT = 16 }; /* std::ios_base::out (_S_out) */
void _ZNSt7__cxx1119basic_ostringstreamIcSt11char_traitsIcESaIcEEC1ESt13_Ios_Openmode(void *self, int mode);
HIDDEN void _ZNSt7__cxx1119basic_ostringstreamIcSt11char_traitsIcESaIcEEC1Ev(void *self) {
  _ZNSt7__cxx1119basic_ostringstreamIcSt11char_traitsIcESaIcEEC1ESt13_Ios_Openmode(self, IOS_OUT);
}

void *_ZNKSt7__cxx1115basic_stringbufIcSt11char_traitsIcESaIcEE3strEv(void *result, const void *self);
HIDDEN void *_ZNOSt7__cxx1115basic_stringbufIcSt11char_traitsIcESaIcEE3strEv(void *result, void *self) {
  return _ZNKSt7__cxx1115basic_stringbufIcSt11char_traitsIcESaIcEE3strEv(result, self);
}
HIDDEN void *_ZNKRSt7__cxx1115basic_stringbufIcSt11char_traitsIcESaIcEE3strEv(void *result, const void *self) {
  return _ZNKSt7__cxx1115basic_stringbufIcSt11char_traitsIcESaIcEE3strEv(result, self);
}

/* std::exception_ptr is one pointer: copying it into a slot that is never destroyed adds a reference,
   destroying it drops one. */
void _ZNSt15__exception_ptr13exception_ptrC1ERKS0_(void *self, const void *other);
void _ZNSt15__exception_ptr13exception_ptrD1Ev(void *self);
HIDDEN void _ZNSt15__exception_ptr13exception_ptr9_M_addrefEv(void *self) {
  void *slot;
  _ZNSt15__exception_ptr13exception_ptrC1ERKS0_(&slot, self);
}
HIDDEN void _ZNSt15__exception_ptr13exception_ptr10_M_releaseEv(void *self) {
  _ZNSt15__exception_ptr13exception_ptrD1Ev(self);
}
