/* Forced into every C and C++ file of the Windows cross build (scripts/build-engine windows), to mend two gaps
 * of Debian 12's mingw-w64 toolchain that llama.cpp runs into. Each part switches itself off where the toolchain
 * is new enough. */
#ifdef _WIN32

/* mingw-w64's headers before 11.0 lack the thread power-throttling declarations of the Windows 10 SDK, which
 * ggml-cpu.c uses so that Windows 11 does not park the cores its threads run on. The same definitions: */
#include <_mingw_mac.h>
#if __MINGW64_VERSION_MAJOR < 11
typedef struct _THREAD_POWER_THROTTLING_STATE {
  unsigned long Version;
  unsigned long ControlMask;
  unsigned long StateMask;
} THREAD_POWER_THROTTLING_STATE;
#define THREAD_POWER_THROTTLING_CURRENT_VERSION 1
#define THREAD_POWER_THROTTLING_EXECUTION_SPEED 0x1
#endif

/* GCC before 13 passes an AMX tile's row stride as a `long`, 32 bits on Windows, which the assembler rejects
 * as an address index ("(%rax,%edi,1) is not a valid base/index expression"); ggml's sapphirerapids variant
 * uses these. The same instructions with a 64-bit stride, as GCC 13 writes them: */
#if defined(__AMX_TILE__) && defined(__GNUC__) && !defined(__clang__) && __GNUC__ < 13
#include <immintrin.h>
#undef _tile_loadd_internal
#undef _tile_stream_loadd_internal
#undef _tile_stored_internal
#define _tile_loadd_internal(dst, base, stride)                                                                   \
  __asm__ volatile("{tileloadd\t(%0,%1,1), %%tmm" #dst "|tileloadd\t%%tmm" #dst ", [%0+%1*1]}"                 \
                   ::"r"((const void *)(base)), "r"((__PTRDIFF_TYPE__)(stride)))
#define _tile_stream_loadd_internal(dst, base, stride)                                                            \
  __asm__ volatile("{tileloaddt1\t(%0,%1,1), %%tmm" #dst "|tileloaddt1\t%%tmm" #dst ", [%0+%1*1]}"             \
                   ::"r"((const void *)(base)), "r"((__PTRDIFF_TYPE__)(stride)))
#define _tile_stored_internal(src, base, stride)                                                                  \
  __asm__ volatile("{tilestored\t%%tmm" #src ", (%0,%1,1)|tilestored\t[%0+%1*1], %%tmm" #src "}"              \
                   ::"r"((void *)(base)), "r"((__PTRDIFF_TYPE__)(stride))                                         \
                   : "memory")
#endif

#endif
