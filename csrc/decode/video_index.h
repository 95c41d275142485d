// Packet-level index of one video stream: the plan that exact sampling is built on.
//
// Scanning packets (demuxing without decoding) is cheap next to decoding, and it tells us
// everything the planner needs: every frame's pts, which packets are keyframes, and in which
// decode-order group (GOP) each frame lives. The index is built once per video and reused by
// every later call (the Python side keeps opened videos in an LRU).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace sage_fast {

struct PacketInfo {
  int64_t pts = 0;      // presentation timestamp, stream time base (dts when the container has none)
  int64_t dts = 0;      // decode timestamp, or INT64_MIN when unknown
  int64_t pos = -1;     // byte position in the file, -1 when the demuxer does not know it
  int32_t size = 0;     // payload size in bytes
  bool key = false;     // a keyframe: decoding may start here
  bool frame = true;    // produces a presented frame (false for packets flagged discard)
};

struct VideoIndex {
  std::string path;
  int stream_index = -1;
  int time_base_num = 1;
  int time_base_den = 1;
  int width = 0;
  int height = 0;
  double average_fps = 0.0;
  int rotation = 0;  // clockwise display rotation in degrees: 0, 90, 180 or 270
  bool has_audio = false;
  std::string codec;
  std::string pixel_format;
  std::string container;
  double container_duration = 0.0;  // seconds, as the container states it (0 when unknown)
  int64_t bit_rate = 0;
  bool from_tables = false;  // scanned from MP4 sample tables alone (no payload read)

  std::vector<PacketInfo> packets;           // every video packet, decode order
  std::vector<int32_t> frame_to_packet;      // presented frame i (pts order) -> packet index
  std::vector<int32_t> packet_gop;           // packet index -> GOP (decode-order group) number
  std::vector<int32_t> gop_first_packet;     // GOP number -> index of its keyframe packet
  std::vector<int64_t> frame_duration;       // presented frame i -> duration in time-base ticks

  size_t num_frames() const { return frame_to_packet.size(); }
  double seconds(int64_t ticks) const {
    return static_cast<double>(ticks) * time_base_num / time_base_den;
  }
};

// Scans every packet of the best video stream. Throws std::runtime_error with a message that
// names the file and the problem (missing, not a video, no video stream, no frames).
VideoIndex build_video_index(const std::string& path);

}  // namespace sage_fast
