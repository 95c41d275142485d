// The one pybind11 module of sage_fast (sage_fast._C): argument checks live here, at the edge.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstring>
#include <stdexcept>
#include <vector>

#include "build_info.h"

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
  m.doc() = "sage_fast's compiled core: native video decoding over FFmpeg and CUDA queries.";

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
