// Exact frame sampling over FFmpeg's libraries (see native_decoder.h for the why).
#include "decode/native_decoder.h"

#include <algorithm>
#include <atomic>
#include <cstring>
#include <exception>
#include <map>
#include <stdexcept>
#include <thread>
#include <unordered_map>

#include "decode/ffmpeg_util.h"

namespace sage_fast {
namespace {

// Reading and dropping up to this many packets is cheaper than a seek + resync.
constexpr int32_t kReadAheadInsteadOfSeek = 48;

struct Target {
  int64_t pts = 0;
  int32_t packet = 0;
  std::vector<int64_t> slots;  // output positions that want this frame
  bool done = false;
};

// One decode run: start at a keyframe packet, stop after the last target's packet.
struct Task {
  int32_t first_packet = 0;
  int32_t last_packet = 0;
  std::vector<Target> targets;
};

bool same_packet(const PacketInfo& info, const AVPacket* pkt) {
  if (info.pos >= 0 && pkt->pos >= 0) return info.pos == pkt->pos;
  int64_t dts = pkt->dts == AV_NOPTS_VALUE ? INT64_MIN : pkt->dts;
  int64_t pts = pkt->pts != AV_NOPTS_VALUE ? pkt->pts : pkt->dts;
  return info.pts == pts && info.dts == dts;
}

// vf_scale's colour handling, so frames equal `ffmpeg -pix_fmt rgb24` byte for byte.
void set_colorspace_like_ffmpeg(SwsContext* sws, const AVFrame* frame) {
  int *inv_table = nullptr, *table = nullptr;
  int in_full = 0, out_full = 0, brightness = 0, contrast = 0, saturation = 0;
  if (sws_getColorspaceDetails(sws, &inv_table, &in_full, &table, &out_full, &brightness,
                               &contrast, &saturation) < 0) {
    return;  // RGB input: no YUV matrix to choose
  }
  int colorspace = frame->colorspace;
  if (colorspace < 1 || colorspace > 10 || colorspace == 8) colorspace = AVCOL_SPC_BT470BG;
  const int* coefficients = sws_getCoefficients(colorspace);
  if (frame->color_range != AVCOL_RANGE_UNSPECIFIED) {
    in_full = frame->color_range == AVCOL_RANGE_JPEG;
  }
  sws_setColorspaceDetails(sws, coefficients, in_full, coefficients, out_full, brightness,
                           contrast, saturation);
}

}  // namespace

struct NativeDecoder::Worker {
  const VideoIndex& index;
  const std::unordered_map<int64_t, int32_t>& key_by_pos;
  FormatPtr fmt;
  CodecPtr codec;
  PacketPtr pkt{av_packet_alloc()};
  FramePtr frame{av_frame_alloc()};
  SwsContext* sws = nullptr;
  int codec_threads = -1;
  int32_t current = -1;  // index of the packet held in `pkt`, -1 when none

  Worker(const VideoIndex& idx, const std::unordered_map<int64_t, int32_t>& keys)
      : index(idx), key_by_pos(keys) {
    fmt = open_format(index.path);
    for (unsigned i = 0; i < fmt->nb_streams; ++i) {
      if (static_cast<int>(i) != index.stream_index) fmt->streams[i]->discard = AVDISCARD_ALL;
    }
  }
  ~Worker() { sws_freeContext(sws); }

  void open_codec(int threads) {
    if (codec && codec_threads == threads) return;
    const AVStream* stream = fmt->streams[index.stream_index];
    const AVCodec* decoder = avcodec_find_decoder(stream->codecpar->codec_id);
    if (decoder == nullptr) {
      throw std::runtime_error(index.path + ": no decoder for codec '" + index.codec +
                               "' in this FFmpeg build");
    }
    CodecPtr ctx(avcodec_alloc_context3(decoder));
    int rc = avcodec_parameters_to_context(ctx.get(), stream->codecpar);
    if (rc < 0) throw_av(index.path, "cannot configure the decoder", rc);
    ctx->pkt_timebase = stream->time_base;
    ctx->thread_count = threads;
    ctx->thread_type = FF_THREAD_FRAME | FF_THREAD_SLICE;
    rc = avcodec_open2(ctx.get(), decoder, nullptr);
    if (rc < 0) throw_av(index.path, "cannot open the decoder", rc);
    codec = std::move(ctx);
    codec_threads = threads;
  }

  // Reads the next packet of the indexed stream (the same filter as the index); false at the end.
  bool read_next() {
    av_packet_unref(pkt.get());
    while (true) {
      int rc = av_read_frame(fmt.get(), pkt.get());
      if (rc < 0) return false;
      if (pkt->stream_index == index.stream_index && pkt->size > 0 &&
          (pkt->pts != AV_NOPTS_VALUE || pkt->dts != AV_NOPTS_VALUE)) {
        return true;
      }
      av_packet_unref(pkt.get());
    }
  }

  // Leaves keyframe packet k loaded in `pkt` with the decoder flushed.
  void position_at(int32_t k, DecodeStats& stats) {
    if (current >= 0 && current < k && k - current <= kReadAheadInsteadOfSeek) {
      while (current < k) {
        if (!read_next() || !same_packet(index.packets[current + 1], pkt.get())) break;
        ++current;
        ++stats.packets_read;
      }
      if (current == k) {
        avcodec_flush_buffers(codec.get());
        return;
      }
    }
    const PacketInfo& key = index.packets[k];
    const int64_t key_ts = key.pts;
    const int64_t second = std::max<int64_t>(1, index.time_base_den / std::max(1, index.time_base_num));
    const int64_t backoffs[] = {0, second, 10 * second, INT64_MAX};
    for (int64_t backoff : backoffs) {
      int64_t ts = backoff == INT64_MAX ? INT64_MIN : key_ts - backoff;
      ++stats.seeks;
      current = -1;
      int rc = backoff == INT64_MAX
                   ? avformat_seek_file(fmt.get(), index.stream_index, INT64_MIN, INT64_MIN,
                                        INT64_MIN, AVSEEK_FLAG_BACKWARD)
                   : av_seek_frame(fmt.get(), index.stream_index, ts, AVSEEK_FLAG_BACKWARD);
      if (rc < 0) continue;
      avcodec_flush_buffers(codec.get());
      // Walk forward to packet k; an arrival past it means the seek overshot.
      while (read_next()) {
        ++stats.packets_read;
        if (same_packet(key, pkt.get())) {
          current = k;
          return;
        }
        if (pkt->pos >= 0 && key.pos >= 0 && pkt->pos > key.pos) break;
        auto found = key_by_pos.find(pkt->pos);
        if (key.pos < 0 && found != key_by_pos.end() && found->second > k) break;
      }
    }
    throw std::runtime_error(index.path + ": cannot seek to the keyframe at packet " +
                             std::to_string(k) + " (damaged file or unseekable stream)");
  }

  void emit(Target& target, uint8_t* out, int height, int width, DecodeStats& stats) {
    (void)stats;
    const size_t frame_bytes = static_cast<size_t>(height) * width * 3;
    sws = sws_getCachedContext(sws, frame->width, frame->height,
                               static_cast<AVPixelFormat>(frame->format), width, height,
                               AV_PIX_FMT_RGB24, SWS_BICUBIC, nullptr, nullptr, nullptr);
    if (sws == nullptr) {
      throw std::runtime_error(index.path + ": cannot convert pixel format " + index.pixel_format +
                               " to RGB");
    }
    set_colorspace_like_ffmpeg(sws, frame.get());
    uint8_t* first = out + static_cast<size_t>(target.slots[0]) * frame_bytes;
    uint8_t* dst[4] = {first, nullptr, nullptr, nullptr};
    int dst_stride[4] = {width * 3, 0, 0, 0};
    sws_scale(sws, frame->data, frame->linesize, 0, frame->height, dst, dst_stride);
    for (size_t i = 1; i < target.slots.size(); ++i) {
      std::memcpy(out + static_cast<size_t>(target.slots[i]) * frame_bytes, first, frame_bytes);
    }
    target.done = true;
  }

  void receive_all(Task& task, std::unordered_map<int64_t, size_t>& by_pts, uint8_t* out,
                   int height, int width, DecodeStats& stats) {
    while (avcodec_receive_frame(codec.get(), frame.get()) >= 0) {
      ++stats.frames_decoded;
      int64_t pts = frame->pts != AV_NOPTS_VALUE ? frame->pts : frame->best_effort_timestamp;
      auto hit = by_pts.find(pts);
      if (hit != by_pts.end() && !task.targets[hit->second].done) {
        emit(task.targets[hit->second], out, height, width, stats);
      }
      av_frame_unref(frame.get());
    }
  }

  void run(Task& task, uint8_t* out, int height, int width, DecodeStats& stats) {
    std::unordered_map<int64_t, size_t> by_pts;
    std::vector<char> needed(task.last_packet - task.first_packet + 1, 0);
    for (size_t i = 0; i < task.targets.size(); ++i) {
      by_pts.emplace(task.targets[i].pts, i);
      needed[task.targets[i].packet - task.first_packet] = 1;
    }
    position_at(task.first_packet, stats);
    ++stats.tasks;
    while (true) {
      // A frame no target shows is worth decoding only if later frames reference it; with
      // AVDISCARD_NONREF the decoder drops it when they do not.
      codec->skip_frame = needed[current - task.first_packet] ? AVDISCARD_DEFAULT : AVDISCARD_NONREF;
      int rc = avcodec_send_packet(codec.get(), pkt.get());
      ++stats.packets_sent;
      if (rc < 0 && rc != AVERROR(EAGAIN) && rc != AVERROR_INVALIDDATA) {
        throw_av(index.path, "decoder failed", rc);
      }
      receive_all(task, by_pts, out, height, width, stats);
      if (current == task.last_packet) break;
      if (!read_next()) break;  // truncated file: keep what was decoded
      ++current;
      ++stats.packets_read;
      if (!same_packet(index.packets[current], pkt.get())) {
        throw std::runtime_error(index.path + ": packet order differs from the index at packet " +
                                 std::to_string(current) + " (file changed while open?)");
      }
    }
    codec->skip_frame = AVDISCARD_DEFAULT;
    avcodec_send_packet(codec.get(), nullptr);  // drain the frames held for reordering
    receive_all(task, by_pts, out, height, width, stats);
    avcodec_flush_buffers(codec.get());
    for (const Target& target : task.targets) {
      if (!target.done) {
        throw std::runtime_error(index.path + ": could not decode the frame at " +
                                 std::to_string(index.seconds(target.pts)) +
                                 " s (damaged or truncated data)");
      }
    }
  }
};

NativeDecoder::NativeDecoder(const std::string& path) : index_(build_video_index(path)) {
  for (int32_t k : index_.gop_first_packet) {
    if (index_.packets[k].pos >= 0) key_by_pos_.emplace(index_.packets[k].pos, k);
  }
}

NativeDecoder::~NativeDecoder() = default;

DecodeStats NativeDecoder::decode(const std::vector<int64_t>& frame_indices, uint8_t* out,
                                  int out_height, int out_width, int num_threads) {
  if (out_height <= 0 || out_width <= 0) {
    throw std::invalid_argument("output size must be positive, got " + std::to_string(out_height) +
                                "x" + std::to_string(out_width));
  }
  const int64_t frames = static_cast<int64_t>(index_.num_frames());
  // Group targets: frame -> packet -> GOP whose keyframe starts the run.
  std::map<int32_t, Task> by_gop;
  std::map<int64_t, std::pair<int32_t, size_t>> seen;  // frame -> (gop, target slot in task)
  for (size_t slot = 0; slot < frame_indices.size(); ++slot) {
    int64_t f = frame_indices[slot];
    if (f < 0 || f >= frames) {
      throw std::out_of_range("frame index " + std::to_string(f) + " is outside [0, " +
                              std::to_string(frames) + ") for " + index_.path);
    }
    auto prior = seen.find(f);
    if (prior != seen.end()) {
      by_gop[prior->second.first].targets[prior->second.second].slots.push_back(
          static_cast<int64_t>(slot));
      continue;
    }
    int32_t packet = index_.frame_to_packet[f];
    int32_t gop = index_.packet_gop[packet];
    // Open-GOP leading pictures show before their keyframe and reference the previous GOP.
    if (gop > 0 && index_.packets[packet].pts < index_.packets[index_.gop_first_packet[gop]].pts) {
      --gop;
    }
    Task& task = by_gop[gop];
    task.first_packet = index_.gop_first_packet[gop];
    task.last_packet = std::max(task.last_packet, packet);
    Target target;
    target.pts = index_.packets[packet].pts;
    target.packet = packet;
    target.slots.push_back(static_cast<int64_t>(slot));
    task.targets.push_back(std::move(target));
    seen.emplace(f, std::make_pair(gop, task.targets.size() - 1));
  }
  std::vector<Task> tasks;
  tasks.reserve(by_gop.size());
  for (auto& entry : by_gop) tasks.push_back(std::move(entry.second));
  DecodeStats total;
  if (tasks.empty()) return total;

  if (num_threads <= 0) num_threads = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  const int workers = std::min<int>(num_threads, static_cast<int>(tasks.size()));
  const int codec_threads = std::max(1, num_threads / workers);
  // Workers take the next task in file order from a shared counter: every worker still reads
  // forward (cheap read-ahead instead of seeks), and uneven GOPs balance themselves, which a
  // static split by packet count does not (decode cost per packet varies several-fold).
  const int used = workers;
  std::lock_guard<std::mutex> lock(mutex_);
  while (static_cast<int>(workers_.size()) < used) workers_.push_back(nullptr);
  std::vector<DecodeStats> stats(used);
  std::vector<std::exception_ptr> errors(used);
  std::atomic<size_t> next_task{0};
  std::atomic<bool> failed{false};
  auto work = [&](int w) {
    try {
      if (!workers_[w]) workers_[w] = std::make_unique<Worker>(index_, key_by_pos_);
      workers_[w]->open_codec(codec_threads);
      for (size_t t = next_task++; t < tasks.size() && !failed; t = next_task++) {
        workers_[w]->run(tasks[t], out, out_height, out_width, stats[w]);
      }
    } catch (...) {
      errors[w] = std::current_exception();
      failed = true;
      if (workers_[w]) workers_[w]->current = -1;
    }
  };
  std::vector<std::thread> threads;
  for (int w = 1; w < used; ++w) threads.emplace_back(work, w);
  work(0);
  for (auto& thread : threads) thread.join();
  for (auto& error : errors) {
    if (error) std::rethrow_exception(error);
  }
  for (const auto& s : stats) {
    total.packets_read += s.packets_read;
    total.packets_sent += s.packets_sent;
    total.frames_decoded += s.frames_decoded;
    total.seeks += s.seeks;
    total.tasks += s.tasks;
  }
  total.workers = used;
  return total;
}

}  // namespace sage_fast
