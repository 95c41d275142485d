// The one pybind11 module of sage_fast (sage_fast._C): argument checks live here, at the edge.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstring>
#include <stdexcept>
#include <vector>

#include "build_info.h"
#include "scheduler/packing.h"
#include "scheduler/py_fastcall.h"
#include "scheduler/scheduler.h"

#ifdef SAGE_FAST_HAS_FFMPEG
#include "decode/ffmpeg_util.h"
#include "decode/native_decoder.h"
#endif

namespace py = pybind11;
using namespace sage_fast;

namespace {

#ifdef SAGE_FAST_HAS_FFMPEG
py::dict index_metadata(const VideoIndex& index) {
  py::dict meta;
  meta["path"] = index.path;
  meta["codec"] = index.codec;
  meta["pixel_format"] = index.pixel_format;
  meta["container"] = index.container;
  meta["width"] = index.width;
  meta["height"] = index.height;
  meta["rotation"] = index.rotation;
  meta["has_audio"] = index.has_audio;
  meta["average_fps"] = index.average_fps;
  meta["container_duration"] = index.container_duration;
  meta["bit_rate"] = index.bit_rate;
  meta["time_base"] = py::make_tuple(index.time_base_num, index.time_base_den);
  meta["num_packets"] = index.packets.size();
  meta["index_source"] = index.from_tables ? "tables" : "packets";
  return meta;
}

// Per presented frame (pts order): pts, duration (ticks), keyframe flag, decode-order position.
py::dict index_arrays(const VideoIndex& index) {
  const size_t n = index.num_frames();
  py::array_t<int64_t> pts(n), duration(n), decode_position(n);
  py::array_t<bool> key(n);
  auto p = pts.mutable_unchecked<1>();
  auto d = duration.mutable_unchecked<1>();
  auto o = decode_position.mutable_unchecked<1>();
  auto k = key.mutable_unchecked<1>();
  for (size_t i = 0; i < n; ++i) {
    const int32_t packet = index.frame_to_packet[i];
    p(i) = index.packets[packet].pts;
    d(i) = index.frame_duration[i];
    o(i) = packet;
    k(i) = index.packets[packet].key;
  }
  py::dict arrays;
  arrays["pts"] = pts;
  arrays["duration"] = duration;
  arrays["decode_position"] = decode_position;
  arrays["is_key"] = key;
  return arrays;
}
#endif

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "sage_fast's compiled core: native video decoding over FFmpeg, CUDA queries, the rollout "
            "scheduler and sample packing.";

  m.def("build_info", []() {
    BuildInfo info = build_info();
    py::dict out;
    out["ffmpeg"] = info.ffmpeg;
    out["cuda"] = info.cuda;
    out["ffmpeg_versions"] = info.ffmpeg_versions;
    out["compiler"] = info.compiler;
    return out;
  }, "How the core was built: {'ffmpeg': bool, 'cuda': bool, 'ffmpeg_versions': str, 'compiler': str}.");
#ifdef SAGE_FAST_HAS_FFMPEG
  // FFmpeg prints to stderr by default; our exceptions already carry the reason, so the core
  // starts quiet and sage_fast._ext applies SAGE_FAST_FFMPEG_LOG when it loads the module.
  av_log_set_level(AV_LOG_FATAL);
  m.def("set_ffmpeg_log_level", [](int level) { av_log_set_level(level); }, py::arg("level"),
        "Sets the log level of the FFmpeg libraries the core links (AV_LOG_* numbers: -8 quiet, "
        "8 fatal, 16 error, 24 warning, 32 info).");
#endif
  m.def("cuda_device_count", &cuda_device_count,
        "CUDA devices visible to the core (0 without CUDA support, a driver or a device).");

  using sched::Scheduler;
  py::class_<Scheduler>(m, "RolloutScheduler",
                        "Deterministic rollout scheduler core: events in, decisions out (see "
                        "sage_fast/rollout/scheduler.py). Every event returns the decisions it took as "
                        "(kind, episode, group, aux, time) tuples.")
      .def(py::init([](int64_t max_seqs, int64_t max_tokens, int32_t max_turns, double tool_timeout,
                       double episode_timeout, int64_t max_active_groups, bool group_priority) {
             sched::Config c;
             c.max_seqs = max_seqs;
             c.max_tokens = max_tokens;
             c.max_turns = max_turns;
             c.tool_timeout = tool_timeout;
             c.episode_timeout = episode_timeout;
             c.max_active_groups = max_active_groups;
             c.group_priority = group_priority;
             return new Scheduler(c);
           }),
           py::arg("max_seqs"), py::arg("max_tokens"), py::arg("max_turns"), py::arg("tool_timeout"),
           py::arg("episode_timeout"), py::arg("max_active_groups"), py::arg("group_priority"))
      .def("add_group", [](Scheduler& s, int32_t size, int64_t cost, double now, bool prepare) {
             const int64_t g = s.add_group(size, cost, now, prepare);
             return py::make_tuple(g, sched::take_decisions(s));
           }, py::arg("size"), py::arg("cost"), py::arg("now"), py::arg("prepare") = false,
           "-> (group id, decisions)")
      .def("finish", [](Scheduler& s, int64_t e, int32_t reason, double now) {
             s.finish_episode(e, reason, now);
             return sched::take_decisions(s);
           }, py::arg("episode"), py::arg("reason"), py::arg("now"))
      .def("turn_finished", [](Scheduler& s, int64_t e, int32_t action, int64_t next_cost, double now) {
             s.turn_finished(e, action, next_cost, now);
             return sched::take_decisions(s);
           }, py::arg("episode"), py::arg("action"), py::arg("next_cost"), py::arg("now"))
      .def("tool_finished", [](Scheduler& s, int64_t e, int64_t next_cost, double now) {
             s.tool_finished(e, next_cost, now);
             return sched::take_decisions(s);
           }, py::arg("episode"), py::arg("next_cost"), py::arg("now"))
      .def("advance", [](Scheduler& s, double now) {
             s.advance(now);
             return sched::take_decisions(s);
           }, py::arg("now"))
      .def("fail", [](Scheduler& s, int64_t e, double now) {
             s.fail(e, now);
             return sched::take_decisions(s);
           }, py::arg("episode"), py::arg("now"))
      .def("cancel", [](Scheduler& s, int64_t e, double now) {
             s.cancel(e, now);
             return sched::take_decisions(s);
           }, py::arg("episode"), py::arg("now"))
      .def("cancel_group", [](Scheduler& s, int64_t g, double now) {
             s.cancel_group(g, now);
             return sched::take_decisions(s);
           }, py::arg("group"), py::arg("now"))
      .def("replay", [](Scheduler& s, py::handle events) {
             const std::vector<sched::Event> evs = sched::events_from_sequence(events);
             std::vector<sched::Decision> out;
             {
               py::gil_scoped_release release;
               out = s.replay(evs);
             }
             return sched::decisions_to_list(out);
           }, py::arg("events"),
           "Feeds recorded (code, a, b, c, time) events in one call (GIL released) and returns every decision.")
      .def("replay_arrays",
           [](Scheduler& s, py::array_t<int32_t, py::array::c_style | py::array::forcecast> code,
              py::array_t<int64_t, py::array::c_style | py::array::forcecast> a,
              py::array_t<int64_t, py::array::c_style | py::array::forcecast> b,
              py::array_t<int64_t, py::array::c_style | py::array::forcecast> c,
              py::array_t<double, py::array::c_style | py::array::forcecast> time) {
             const py::ssize_t n = code.size();
             if (code.ndim() != 1 || a.size() != n || b.size() != n || c.size() != n || time.size() != n) {
               throw py::value_error("code, a, b, c and time must be 1-D arrays of the same length");
             }
             std::vector<sched::Event> evs(static_cast<size_t>(n));
             const int32_t* cp = code.data();
             const int64_t *ap = a.data(), *bp = b.data(), *cc = c.data();
             const double* tp0 = time.data();
             for (py::ssize_t i = 0; i < n; ++i) evs[i] = sched::Event{cp[i], ap[i], bp[i], cc[i], tp0[i]};
             std::vector<sched::Decision> out;
             {
               py::gil_scoped_release release;
               out = s.replay(evs);
             }
             const size_t m = out.size();
             py::array_t<int32_t> kind(m), aux(m);
             py::array_t<int64_t> episode(m), group(m);
             py::array_t<double> when(m);
             int32_t* kp = kind.mutable_data();
             int64_t* ep = episode.mutable_data();
             int64_t* gp = group.mutable_data();
             int32_t* xp = aux.mutable_data();
             double* tp = when.mutable_data();
             for (size_t i = 0; i < m; ++i) {
               kp[i] = out[i].kind;
               ep[i] = out[i].episode;
               gp[i] = out[i].group;
               xp[i] = out[i].aux;
               tp[i] = out[i].time;
             }
             py::dict d;
             d["kind"] = kind;
             d["episode"] = episode;
             d["group"] = group;
             d["aux"] = aux;
             d["time"] = when;
             return d;
           }, py::arg("code"), py::arg("a"), py::arg("b"), py::arg("c"), py::arg("time"),
           "replay over column arrays (GIL released): -> {'kind', 'episode', 'group', 'aux', 'time'} arrays.")
      .def("fast_calls", &sched::fast_calls,
           "(turn_finished, tool_finished, advance, fail, next_deadline) as builtin functions bound to this "
           "core: the same calls without pybind11's dispatcher, for drivers that call once per event.")
      .def("next_deadline", &Scheduler::next_deadline, "Earliest live time-out in seconds (inf when none).")
      .def("state", &Scheduler::state, py::arg("episode"))
      .def("turns", &Scheduler::turns, py::arg("episode"))
      .def("group_of", &Scheduler::group_of, py::arg("episode"))
      .def("stats", [](const Scheduler& s) {
        const sched::Stats& st = s.stats();
        py::dict d;
        d["seqs_in_flight"] = st.seqs_in_flight;
        d["tokens_in_flight"] = st.tokens_in_flight;
        d["episodes"] = st.episodes;
        d["groups"] = st.groups;
        d["done"] = st.done;
        d["groups_done"] = st.groups_done;
        d["admitted_turns"] = st.admitted_turns;
        d["tool_calls"] = st.tool_calls;
        d["tool_timeouts"] = st.tool_timeouts;
        d["decisions"] = st.decisions;
        return d;
      });

  m.def("pack_samples", [](py::array_t<int64_t, py::array::c_style | py::array::forcecast> lengths, int64_t budget,
                           int32_t world_size) {
          if (lengths.ndim() != 1) throw py::value_error("lengths must be a 1-D array of token counts");
          std::vector<int64_t> lens(lengths.data(), lengths.data() + lengths.shape(0));
          sched::PackResult r;
          {
            py::gil_scoped_release release;
            r = sched::pack(lens, budget, world_size);
          }
          py::dict out;
          out["order"] = py::array_t<int64_t>(r.order.size(), r.order.data());
          out["offsets"] = py::array_t<int64_t>(r.offsets.size(), r.offsets.data());
          out["ranks"] = py::array_t<int32_t>(r.ranks.size(), r.ranks.data());
          out["loads"] = py::array_t<int64_t>(r.loads.size(), r.loads.data());
          return out;
        }, py::arg("lengths"), py::arg("budget"), py::arg("world_size"),
        "Packs samples of `lengths` tokens into micro-batches of at most `budget` tokens, the same "
        "number per rank, balanced across `world_size` ranks (GIL released). Returns order, offsets, "
        "ranks, loads arrays.");

#ifdef SAGE_FAST_HAS_FFMPEG
  py::class_<NativeDecoder>(m, "NativeDecoder")
      .def(py::init<const std::string&>(), py::arg("path"), py::call_guard<py::gil_scoped_release>(),
           "Opens `path` and indexes every packet of its best video stream.")
      .def_property_readonly("metadata", [](const NativeDecoder& d) { return index_metadata(d.index()); })
      .def("index_arrays", [](const NativeDecoder& d) { return index_arrays(d.index()); },
           "Per presented frame (pts order): pts, duration, decode_position (int64), is_key (bool).")
      .def(
          "decode",
          [](NativeDecoder& decoder, py::array_t<int64_t, py::array::c_style | py::array::forcecast> frames,
             py::buffer out, int num_threads) {
            if (frames.ndim() != 1) throw py::value_error("frames must be a 1-D array of frame indices");
            py::buffer_info buf = out.request(true);
            if (buf.readonly) throw py::value_error("out must be writable");
            if (buf.ndim != 4 || buf.shape[3] != 3 || buf.itemsize != 1) {
              throw py::value_error("out must be a uint8 array of shape (n, height, width, 3)");
            }
            if (buf.shape[0] != frames.shape(0)) {
              throw py::value_error("out has " + std::to_string(buf.shape[0]) + " frames but " +
                                    std::to_string(frames.shape(0)) + " frame indices were given");
            }
            const py::ssize_t h = buf.shape[1], w = buf.shape[2];
            if (buf.strides[3] != 1 || buf.strides[2] != 3 || buf.strides[1] != 3 * w ||
                buf.strides[0] != 3 * w * h) {
              throw py::value_error("out must be C-contiguous (n, height, width, 3)");
            }
            std::vector<int64_t> indices(frames.data(), frames.data() + frames.shape(0));
            DecodeStats stats;
            {
              py::gil_scoped_release release;
              stats = decoder.decode(indices, static_cast<uint8_t*>(buf.ptr), static_cast<int>(h),
                                     static_cast<int>(w), num_threads);
            }
            py::dict result;
            result["packets_read"] = stats.packets_read;
            result["packets_sent"] = stats.packets_sent;
            result["frames_decoded"] = stats.frames_decoded;
            result["seeks"] = stats.seeks;
            result["tasks"] = stats.tasks;
            result["workers"] = stats.workers;
            return result;
          },
          py::arg("frames"), py::arg("out"), py::arg("num_threads") = 0,
          "Decodes presented frames `frames` into `out` (n, H, W, 3) uint8 RGB, resizing to H x W "
          "when it differs from the coded size. Releases the GIL. Returns decode statistics.");
#endif
}
