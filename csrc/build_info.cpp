// Reports how the compiled core was built and what it finds at run time.
#include "build_info.h"

#ifdef SAGE_FAST_HAS_FFMPEG
#include "decode/ffmpeg_util.h"
#endif

namespace sage_fast {

#ifdef SAGE_FAST_HAS_CUDA
int cuda_runtime_device_count();  // csrc/cuda/cuda_info.cu
#endif

namespace {
#ifdef SAGE_FAST_HAS_FFMPEG
std::string version_string(unsigned v) {
  return std::to_string(v >> 16) + "." + std::to_string((v >> 8) & 0xff) + "." +
         std::to_string(v & 0xff);
}
#endif
}  // namespace

BuildInfo build_info() {
  BuildInfo info;
#ifdef SAGE_FAST_HAS_FFMPEG
  info.ffmpeg = true;
  info.ffmpeg_versions = "avformat " + version_string(avformat_version()) + ", avcodec " +
                         version_string(avcodec_version()) + ", avutil " +
                         version_string(avutil_version()) + ", swscale " +
                         version_string(swscale_version());
#endif
#ifdef SAGE_FAST_HAS_CUDA
  info.cuda = true;
#endif
#if defined(__clang__)
  info.compiler = "clang " __clang_version__;
#elif defined(__GNUC__)
  info.compiler = "gcc " __VERSION__;
#else
  info.compiler = "unknown";
#endif
  return info;
}

int cuda_device_count() {
#ifdef SAGE_FAST_HAS_CUDA
  return cuda_runtime_device_count();
#else
  return 0;
#endif
}

}  // namespace sage_fast
