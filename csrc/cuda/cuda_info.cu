// CUDA runtime queries for the compiled core; built only when SAGE_FAST_CUDA finds a toolkit.
#include <cuda_runtime.h>

namespace sage_fast {

// Zero when no driver or device is present: the module must load and work on CPU machines.
int cuda_runtime_device_count() {
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess) {
    cudaGetLastError();  // clear the sticky error so later CUDA users start clean
    return 0;
  }
  return count;
}

}  // namespace sage_fast
