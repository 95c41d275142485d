// Exact frame sampling over FFmpeg's libraries: each GOP decoded at most once, in order, in
// parallel threads, skipping the non-reference frames that no target needs.
//
// Why this beats decoding "to" each target: uniform samples of a long video land one or two per
// GOP. Decoding from the GOP's keyframe up to the target is unavoidable, but (1) frames that are
// neither targets nor references (most B-frames) can be dropped by the decoder before any
// reconstruction work, (2) nothing after the last target of a GOP needs decoding, (3) GOPs are
// independent, so disjoint runs of them decode on separate threads with separate demuxers, and
// (4) only targets are colour-converted, straight into the caller's buffer.
#pragma once

#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <unordered_map>
#include <vector>

#include "decode/video_index.h"

namespace sage_fast {

struct DecodeStats {
  int64_t packets_read = 0;     // packets demuxed by all workers
  int64_t packets_sent = 0;     // packets handed to the decoder
  int64_t frames_decoded = 0;   // frames the decoder returned (skipped non-references excluded)
  int64_t seeks = 0;
  int64_t tasks = 0;            // independent decode runs (one per group of targets)
  int workers = 0;
};

class NativeDecoder {
 public:
  explicit NativeDecoder(const std::string& path);
  ~NativeDecoder();
  NativeDecoder(const NativeDecoder&) = delete;
  NativeDecoder& operator=(const NativeDecoder&) = delete;

  const VideoIndex& index() const { return index_; }

  // Decodes presented frames `frame_indices` (pts order; any order, duplicates allowed) into
  // `out`, a buffer of frame_indices.size() * out_height * out_width * 3 bytes (RGB24, HWC per
  // frame, frames in the order asked). Frames are resized when the output size differs from the
  // coded size (bicubic, as ffmpeg's scale filter). Safe to call from several threads: calls on
  // one decoder are serialised. num_threads <= 0 means the hardware concurrency.
  DecodeStats decode(const std::vector<int64_t>& frame_indices, uint8_t* out, int out_height,
                     int out_width, int num_threads);

  struct Worker;  // one demuxer + decoder + scaler, reused across calls

 private:
  VideoIndex index_;
  std::unordered_map<int64_t, int32_t> key_by_pos_;  // keyframe byte position -> packet
  std::mutex mutex_;
  std::vector<std::unique_ptr<Worker>> workers_;
};

}  // namespace sage_fast
