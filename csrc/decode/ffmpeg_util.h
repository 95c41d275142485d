// RAII owners and error helpers for FFmpeg's C objects, shared by the index and the decoder.
#pragma once

extern "C" {
#include <libavcodec/avcodec.h>
#include <libavformat/avformat.h>
#include <libavutil/avutil.h>
#include <libavutil/display.h>
#include <libavutil/error.h>
#include <libavutil/pixdesc.h>
#include <libswscale/swscale.h>
}

#include <memory>
#include <stdexcept>
#include <string>

namespace sage_fast {

inline std::string av_error_string(int code) {
  char buffer[AV_ERROR_MAX_STRING_SIZE] = {0};
  av_strerror(code, buffer, sizeof(buffer));
  return std::string(buffer);
}

[[noreturn]] inline void throw_av(const std::string& path, const std::string& what, int code) {
  throw std::runtime_error(path + ": " + what + " (" + av_error_string(code) + ")");
}

struct FormatCloser {
  void operator()(AVFormatContext* ctx) const { avformat_close_input(&ctx); }
};
struct CodecFreer {
  void operator()(AVCodecContext* ctx) const { avcodec_free_context(&ctx); }
};
struct PacketFreer {
  void operator()(AVPacket* pkt) const { av_packet_free(&pkt); }
};
struct FrameFreer {
  void operator()(AVFrame* frame) const { av_frame_free(&frame); }
};
struct SwsFreer {
  void operator()(SwsContext* ctx) const { sws_freeContext(ctx); }
};

using FormatPtr = std::unique_ptr<AVFormatContext, FormatCloser>;
using CodecPtr = std::unique_ptr<AVCodecContext, CodecFreer>;
using PacketPtr = std::unique_ptr<AVPacket, PacketFreer>;
using FramePtr = std::unique_ptr<AVFrame, FrameFreer>;
using SwsPtr = std::unique_ptr<SwsContext, SwsFreer>;

// Opens a file and reads its stream headers; errors name the file.
inline FormatPtr open_format(const std::string& path) {
  AVFormatContext* raw = nullptr;
  int rc = avformat_open_input(&raw, path.c_str(), nullptr, nullptr);
  if (rc < 0) throw_av(path, "cannot open as a media file", rc);
  FormatPtr ctx(raw);
  // Containers such as AVI store no pts: let libavformat derive them (B-frame reordering
  // included) so that frames are indexed in presentation order, as the decoder outputs them.
  ctx->flags |= AVFMT_FLAG_GENPTS;
  rc = avformat_find_stream_info(ctx.get(), nullptr);
  if (rc < 0) throw_av(path, "cannot read stream information", rc);
  return ctx;
}

}  // namespace sage_fast
