// What the compiled core was built with: reported by `sage-fast doctor`.
#pragma once

#include <string>

namespace sage_fast {

struct BuildInfo {
  bool ffmpeg = false;
  bool cuda = false;
  std::string ffmpeg_versions;  // "avformat 59.27.100, avcodec 59.37.100, ..." (linked at run time)
  std::string compiler;
};

BuildInfo build_info();
int cuda_device_count();  // 0 when built without CUDA or when no device/driver is present

}  // namespace sage_fast
