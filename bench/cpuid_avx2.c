// A process that sees its CPU without AVX-512: an LD_PRELOAD shim for the benchmarks, so that a peer
// with no switch of its own (ONNX Runtime's MLAS picks its kernels from CPUID) can be measured on
// AVX2 beside `CNNFAST_ISA=avx2` on a machine that has AVX-512. Linux on x86-64 only, and only where
// the kernel offers CPUID faulting (`cpuid_fault` in /proc/cpuinfo: Intel since Ivy Bridge, AMD
// since Zen 4 or so, and most hypervisors pass it on).
//
// At load, before the program's own code runs, CPUID is made to fault (arch_prctl ARCH_SET_CPUID 0,
// inherited by every thread created later). Each CPUID then raises SIGSEGV; the handler runs the
// real instruction (faulting off for a moment, in that thread only), clears the AVX-512, AVX10 and
// AMX bits of leaf 7 and leaf 0x24, writes the registers back and steps over the two-byte
// instruction. Everything else the CPU reports (AVX2, FMA, AVX-VNNI, the caches) is left as it is.
// glibc reads CPUID before any preloaded library runs: its own AVX-512 variants (memcpy, libm) are
// held back by GLIBC_TUNABLES=glibc.cpu.hwcaps=-AVX512F,... instead (bench_onnx.py sets both). (XGETBV
// still says the OS saves the zmm state; a program that checked that alone would still find AVX-512.
// MLAS, numpy and oneDNN check CPUID.)
//
//   cc -O2 -shared -fPIC -o cpuid_avx2.so bench/cpuid_avx2.c
//   LD_PRELOAD=$PWD/cpuid_avx2.so python -c "import numpy; numpy.show_runtime()"
//
// cnnfast_cpuid_masked: 1 once faulting is on; cnnfast_cpuid_calls: the CPUIDs answered (a caller
// can read both through ctypes, to check the shim took effect and that no CPUID ran in a timed
// loop). A SIGSEGV that is not a CPUID is handed to the default action (the process dies as it
// would have), so a program that installs its own SIGSEGV handler later (Python's faulthandler:
// PYTHONFAULTHANDLER, PYTHONDEVMODE, -X faulthandler) must not be run under this shim.
#if !defined(__x86_64__) || !defined(__linux__)
#error "cpuid_avx2.c is for Linux on x86-64"
#endif
#define _GNU_SOURCE
#include <asm/prctl.h>
#include <cpuid.h>
#include <signal.h>
#include <string.h>
#include <sys/syscall.h>
#include <ucontext.h>
#include <unistd.h>

int cnnfast_cpuid_masked = 0;
long cnnfast_cpuid_calls = 0;

static long set_cpuid(int enabled) { return syscall(SYS_arch_prctl, ARCH_SET_CPUID, enabled); }

// leaf 7, subleaf 0: EBX AVX512F (16), DQ (17), IFMA (21), PF (26), ER (27), CD (28), BW (30), VL (31);
// ECX VBMI (1), VBMI2 (6), VNNI (11), BITALG (12), VPOPCNTDQ (14); EDX 4VNNIW (2), 4FMAPS (3),
// VP2INTERSECT (8), AMX-BF16 (22), AVX512_FP16 (23), AMX-TILE (24), AMX-INT8 (25)
#define LEAF7_EBX 0xDC230000u
#define LEAF7_ECX 0x00005842u
#define LEAF7_EDX 0x03C0010Cu
// leaf 7, subleaf 1: EAX AVX512_BF16 (5), AMX-FP16 (21); EDX AVX10 (19), AMX-COMPLEX (8)
#define LEAF7_1_EAX 0x00200020u
#define LEAF7_1_EDX 0x00080100u

static void on_segv(int sig, siginfo_t* info, void* context) {
  ucontext_t* uc = (ucontext_t*)context;
  greg_t* regs = uc->uc_mcontext.gregs;
  const unsigned char* ip = (const unsigned char*)regs[REG_RIP];
  // (CPUID's fault is a general-protection fault: si_code SI_KERNEL, RIP at the instruction)
  if (info->si_code != SI_KERNEL || ip[0] != 0x0F || ip[1] != 0xA2) {
    signal(sig, SIG_DFL);                // (returning re-runs a faulting instruction, which now ends the process)
    if (info->si_code <= 0) raise(sig);  // (a signal sent by a program: sent again)
    return;
  }
  unsigned leaf = (unsigned)regs[REG_RAX], sub = (unsigned)regs[REG_RCX], a, b, c, d;
  set_cpuid(1);
  __cpuid_count(leaf, sub, a, b, c, d);
  set_cpuid(0);
  if (leaf == 7 && sub == 0) b &= ~LEAF7_EBX, c &= ~LEAF7_ECX, d &= ~LEAF7_EDX;
  if (leaf == 7 && sub == 1) a &= ~LEAF7_1_EAX, d &= ~LEAF7_1_EDX;
  if (leaf == 0x24) a = b = c = d = 0;  // (AVX10's own leaf)
  regs[REG_RAX] = a, regs[REG_RBX] = b, regs[REG_RCX] = c, regs[REG_RDX] = d;
  regs[REG_RIP] += 2;
  __atomic_fetch_add(&cnnfast_cpuid_calls, 1, __ATOMIC_RELAXED);
}

__attribute__((constructor)) static void mask_avx512(void) {
  struct sigaction action;
  memset(&action, 0, sizeof action);
  action.sa_sigaction = on_segv;
  action.sa_flags = SA_SIGINFO;
  sigemptyset(&action.sa_mask);
  if (sigaction(SIGSEGV, &action, 0) != 0) return;
  if (set_cpuid(0) != 0) {  // (no CPUID faulting here: leave the process as it was)
    signal(SIGSEGV, SIG_DFL);
    return;
  }
  cnnfast_cpuid_masked = 1;
}
