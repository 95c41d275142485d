// Builds the packet-level index of a video stream (see video_index.h for why).
#include "decode/video_index.h"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <cerrno>
#include <cstring>

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include "decode/ffmpeg_util.h"

namespace sage_fast {
namespace {

VideoIndex scan_video_packets(FormatPtr fmt, const std::string& path);

int display_rotation(const AVStream* stream) {
  size_t size = 0;
  const uint8_t* matrix = av_stream_get_side_data(stream, AV_PKT_DATA_DISPLAYMATRIX, &size);
  if (matrix == nullptr || size < 9 * sizeof(int32_t)) return 0;
  // av_display_rotation_get gives the counter-clockwise angle; players rotate by its negation.
  double ccw = av_display_rotation_get(reinterpret_cast<const int32_t*>(matrix));
  if (std::isnan(ccw)) return 0;
  long clockwise = std::lround(-ccw);
  clockwise = ((clockwise % 360) + 360) % 360;
  return static_cast<int>((clockwise + 45) / 90 * 90 % 360);
}


// A file source for libavformat that can stop reading payloads. MP4/MOV demuxers take every
// packet's timestamps, flags and size from the moov sample tables, so once the header is parsed
// the scan needs no payload bytes: it touches 100 KB of tables instead of gigabytes of video.
struct TableOnlyFile {
  int fd = -1;
  int64_t size = 0;
  int64_t pos = 0;
  bool skip_payload = false;
  AVIOContext* io = nullptr;

  explicit TableOnlyFile(const std::string& path) {
    fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) throw std::runtime_error(path + ": cannot open (" + std::strerror(errno) + ")");
    struct stat st {};
    if (::fstat(fd, &st) == 0) size = st.st_size;
    constexpr int kBufferSize = 1 << 16;
    auto* buffer = static_cast<uint8_t*>(av_malloc(kBufferSize));
    io = avio_alloc_context(buffer, kBufferSize, 0, this, &TableOnlyFile::read, nullptr,
                            &TableOnlyFile::seek);
  }
  ~TableOnlyFile() {
    if (io != nullptr) {
      av_freep(&io->buffer);
      avio_context_free(&io);
    }
    if (fd >= 0) ::close(fd);
  }

  static int read(void* opaque, uint8_t* buf, int want) {
    auto* self = static_cast<TableOnlyFile*>(opaque);
    int64_t left = self->size - self->pos;
    if (left <= 0) return AVERROR_EOF;
    int n = static_cast<int>(std::min<int64_t>(want, left));
    if (!self->skip_payload) {
      ssize_t got = ::pread(self->fd, buf, n, self->pos);
      if (got <= 0) return got == 0 ? AVERROR_EOF : AVERROR(errno);
      n = static_cast<int>(got);
    }
    self->pos += n;
    return n;
  }
  static int64_t seek(void* opaque, int64_t offset, int whence) {
    auto* self = static_cast<TableOnlyFile*>(opaque);
    whence &= ~AVSEEK_FORCE;
    if (whence == AVSEEK_SIZE) return self->size;
    if (whence == SEEK_SET) self->pos = offset;
    else if (whence == SEEK_CUR) self->pos += offset;
    else if (whence == SEEK_END) self->pos = self->size + offset;
    else return AVERROR(EINVAL);
    return self->pos;
  }
};

bool same_entry(const PacketInfo& a, const PacketInfo& b) {
  return a.pts == b.pts && a.dts == b.dts && a.pos == b.pos && a.size == b.size && a.key == b.key &&
         a.frame == b.frame;
}

PacketInfo packet_info(const AVPacket* pkt) {
  PacketInfo info;
  info.dts = pkt->dts == AV_NOPTS_VALUE ? INT64_MIN : pkt->dts;
  info.pts = pkt->pts != AV_NOPTS_VALUE ? pkt->pts : pkt->dts;
  info.pos = pkt->pos;
  info.size = pkt->size;
  info.key = (pkt->flags & AV_PKT_FLAG_KEY) != 0;
  info.frame = (pkt->flags & AV_PKT_FLAG_DISCARD) == 0;
  return info;
}

// A table-only scan is trusted only where a normal read (payloads, parsers) agrees with it:
// the first, a middle and the last GOP are read for real and compared packet by packet.
bool agrees_with_real_reads(const std::string& path, const VideoIndex& index) {
  FormatPtr fmt = open_format(path);
  PacketPtr pkt(av_packet_alloc());
  const auto& gops = index.gop_first_packet;
  constexpr size_t kCompare = 24;
  for (size_t g : {size_t{0}, gops.size() / 2, gops.size() - 1}) {
    const size_t first = static_cast<size_t>(gops[g]);
    const PacketInfo& key = index.packets[first];
    if (av_seek_frame(fmt.get(), index.stream_index, key.pts, AVSEEK_FLAG_BACKWARD) < 0) return false;
    size_t next = SIZE_MAX;  // index position of the next packet to compare, once aligned
    size_t compared = 0;
    const size_t want = std::min(kCompare, index.packets.size() - first);
    int guard = 0;
    while (compared < want && av_read_frame(fmt.get(), pkt.get()) >= 0) {
      if (pkt->stream_index == index.stream_index && pkt->size > 0) {
        PacketInfo info = packet_info(pkt.get());
        if (next == SIZE_MAX && same_entry(info, key)) next = first;
        if (next != SIZE_MAX) {
          if (!same_entry(info, index.packets[next])) return false;
          ++next;
          ++compared;
        } else if (++guard > 100000) {
          return false;
        }
      }
      av_packet_unref(pkt.get());
    }
    av_packet_unref(pkt.get());
    if (compared < want) return false;
  }
  return true;
}

}  // namespace

VideoIndex build_video_index(const std::string& path) {
  {
    TableOnlyFile source(path);
    if (source.io == nullptr) throw std::runtime_error(path + ": out of memory");
    AVFormatContext* raw = avformat_alloc_context();
    raw->pb = source.io;
    // No parsers: with payloads skipped they would read garbage (H.264's parser sets the
    // keyframe flag from the bitstream); the sample tables carry pts, dts, size and sync flags.
    raw->flags |= AVFMT_FLAG_CUSTOM_IO | AVFMT_FLAG_GENPTS | AVFMT_FLAG_NOPARSE | AVFMT_FLAG_NOFILLIN;
    const AVInputFormat* mov = av_find_input_format("mov");
    if (avformat_open_input(&raw, path.c_str(), mov, nullptr) >= 0) {
      FormatPtr fmt(raw);
      const bool tables_suffice = avformat_find_stream_info(fmt.get(), nullptr) >= 0;
      int best = av_find_best_stream(fmt.get(), AVMEDIA_TYPE_VIDEO, -1, -1, nullptr, 0);
      const AVCodecID codec = best >= 0 ? fmt->streams[best]->codecpar->codec_id : AV_CODEC_ID_NONE;
      // Codecs whose packets mov hands over without a parser reading the payload.
      if (tables_suffice && (codec == AV_CODEC_ID_H264 || codec == AV_CODEC_ID_HEVC ||
                             codec == AV_CODEC_ID_AV1 || codec == AV_CODEC_ID_VP9)) {
        source.skip_payload = true;
        try {
          VideoIndex index = scan_video_packets(std::move(fmt), path);
          if (agrees_with_real_reads(path, index)) {
            index.from_tables = true;
            return index;
          }
        } catch (const std::exception&) {
          // fall through to the full scan, which reports errors with real data
        }
      }
    }
  }
  return scan_video_packets(open_format(path), path);
}

namespace {

VideoIndex scan_video_packets(FormatPtr fmt, const std::string& path) {
  int stream_index = av_find_best_stream(fmt.get(), AVMEDIA_TYPE_VIDEO, -1, -1, nullptr, 0);
  if (stream_index < 0) {
    throw std::runtime_error(path + ": has no video stream (audio-only or not a video file)");
  }
  VideoIndex index;
  index.path = path;
  index.stream_index = stream_index;
  AVStream* stream = fmt->streams[stream_index];
  const AVCodecParameters* par = stream->codecpar;
  index.time_base_num = stream->time_base.num;
  index.time_base_den = stream->time_base.den;
  index.width = par->width;
  index.height = par->height;
  index.rotation = display_rotation(stream);
  index.codec = avcodec_get_name(par->codec_id);
  const char* pix = av_get_pix_fmt_name(static_cast<AVPixelFormat>(par->format));
  index.pixel_format = pix ? pix : "unknown";
  index.container = fmt->iformat->name;
  index.container_duration =
      fmt->duration > 0 ? static_cast<double>(fmt->duration) / AV_TIME_BASE : 0.0;
  index.bit_rate = fmt->bit_rate;
  if (stream->avg_frame_rate.num > 0 && stream->avg_frame_rate.den > 0) {
    index.average_fps = av_q2d(stream->avg_frame_rate);
  }
  for (unsigned i = 0; i < fmt->nb_streams; ++i) {
    if (static_cast<int>(i) == stream_index) continue;
    if (fmt->streams[i]->codecpar->codec_type == AVMEDIA_TYPE_AUDIO) index.has_audio = true;
    // Demuxers such as mov skip the payload of discarded streams: the scan reads video only.
    fmt->streams[i]->discard = AVDISCARD_ALL;
  }

  PacketPtr pkt(av_packet_alloc());
  std::vector<int64_t> packet_duration;
  while (true) {
    int rc = av_read_frame(fmt.get(), pkt.get());
    if (rc == AVERROR_EOF) break;
    if (rc < 0) break;  // a truncated or damaged tail: keep the packets read so far
    if (pkt->stream_index == stream_index && pkt->size > 0 &&
        (pkt->pts != AV_NOPTS_VALUE || pkt->dts != AV_NOPTS_VALUE)) {
      index.packets.push_back(packet_info(pkt.get()));
      packet_duration.push_back(pkt->duration);
    }
    av_packet_unref(pkt.get());
  }

  // Decoding can only start at a keyframe: packets before the first one are unusable.
  auto first_key = std::find_if(index.packets.begin(), index.packets.end(),
                                [](const PacketInfo& p) { return p.key; });
  if (first_key != index.packets.begin()) {
    size_t drop = static_cast<size_t>(first_key - index.packets.begin());
    index.packets.erase(index.packets.begin(), first_key);
    packet_duration.erase(packet_duration.begin(), packet_duration.begin() + drop);
  }
  const size_t n = index.packets.size();
  index.packet_gop.resize(n);
  int32_t gop = -1;
  for (size_t i = 0; i < n; ++i) {
    if (index.packets[i].key) {
      ++gop;
      index.gop_first_packet.push_back(static_cast<int32_t>(i));
    }
    index.packet_gop[i] = gop;
  }
  for (size_t i = 0; i < n; ++i) {
    if (index.packets[i].frame) index.frame_to_packet.push_back(static_cast<int32_t>(i));
  }
  if (index.frame_to_packet.empty()) {
    throw std::runtime_error(path + ": the video stream has no decodable frames (empty, zero-length "
                                    "or truncated before the first keyframe)");
  }
  std::stable_sort(index.frame_to_packet.begin(), index.frame_to_packet.end(),
                   [&](int32_t a, int32_t b) { return index.packets[a].pts < index.packets[b].pts; });
  const size_t frames = index.frame_to_packet.size();
  index.frame_duration.resize(frames);
  for (size_t i = 0; i + 1 < frames; ++i) {
    index.frame_duration[i] = index.packets[index.frame_to_packet[i + 1]].pts -
                              index.packets[index.frame_to_packet[i]].pts;
  }
  int64_t last = packet_duration[index.frame_to_packet[frames - 1]];
  if (last <= 0) {
    if (frames > 1) {
      last = index.frame_duration[frames - 2];
    } else if (index.average_fps > 0) {
      last = static_cast<int64_t>(std::llround(index.time_base_den /
                                               (index.average_fps * index.time_base_num)));
    }
  }
  index.frame_duration[frames - 1] = std::max<int64_t>(last, 0);
  return index;
}

}  // namespace
}  // namespace sage_fast
