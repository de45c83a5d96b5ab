/* For testing under Debian 12's wine (8.0) only; never packed into a stove file.
 * Rust's standard library for Windows draws random bytes from ProcessPrng in bcryptprimitives.dll, which every
 * Windows 10 and 11 has but wine before 9.0 lacks, so no Rust program starts there. This DLL, put into the wine
 * prefix by scripts/build-engine, gives ProcessPrng from advapi32's RtlGenRandom (SystemFunction036). */
#include <windows.h>

BOOLEAN WINAPI SystemFunction036(PVOID buffer, ULONG length);

__declspec(dllexport) BOOL WINAPI ProcessPrng(PBYTE data, SIZE_T length) {
  while (length > 0) {
    ULONG chunk = length > 0x40000000 ? 0x40000000 : (ULONG)length;
    if (!SystemFunction036(data, chunk)) return FALSE;
    data += chunk;
    length -= chunk;
  }
  return TRUE;
}
