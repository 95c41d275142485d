// The scheduler's per-event Python calls over METH_FASTCALL (see py_fastcall.h).
#include "scheduler/py_fastcall.h"

#include <limits>
#include <stdexcept>
#include <string>

namespace py = pybind11;

namespace sage_fast::sched {
namespace {

constexpr const char* kCapsuleName = "sage_fast._C.RolloutScheduler.fast_calls";

// What the capsule behind each fast function holds: the core, and a reference to the Python
// object that owns it, so the core outlives every function bound to it.
struct Bound {
  Scheduler* core;
  PyObject* owner;
};

void free_bound(PyObject* capsule) {
  auto* bound = static_cast<Bound*>(PyCapsule_GetPointer(capsule, kCapsuleName));
  if (bound == nullptr) return;
  Py_XDECREF(bound->owner);
  delete bound;
}

Scheduler& core_of(PyObject* capsule) {
  return *static_cast<Bound*>(PyCapsule_GetPointer(capsule, kCapsuleName))->core;
}

bool check_nargs(const char* name, Py_ssize_t nargs, Py_ssize_t want, const char* signature) {
  if (nargs == want) return true;
  PyErr_Format(PyExc_TypeError, "%s(%s) takes %zd arguments, got %zd", name, signature, want, nargs);
  return false;
}

// An int argument: Python ints and anything with __index__ (IntEnum, numpy ints); not floats.
bool int_arg(PyObject* o, int64_t lo, int64_t hi, const char* what, int64_t* out) {
  if (PyFloat_Check(o)) {
    PyErr_Format(PyExc_TypeError, "%s must be an int, got a float", what);
    return false;
  }
  const long long v = PyLong_AsLongLong(o);
  if (v == -1 && PyErr_Occurred()) return false;
  if (v < lo || v > hi) {
    PyErr_Format(PyExc_OverflowError, "%s=%lld is out of range", what, v);
    return false;
  }
  *out = v;
  return true;
}

bool time_arg(PyObject* o, double* out) {
  const double v = PyFloat_AsDouble(o);
  if (v == -1.0 && PyErr_Occurred()) return false;
  *out = v;
  return true;
}

constexpr int64_t kI64Min = std::numeric_limits<int64_t>::min();
constexpr int64_t kI64Max = std::numeric_limits<int64_t>::max();
constexpr int64_t kI32Min = std::numeric_limits<int32_t>::min();
constexpr int64_t kI32Max = std::numeric_limits<int32_t>::max();

// Runs `apply` on the core and returns the decisions it took; C++ errors become the Python
// exceptions pybind11 would raise for them.
template <typename Fn>
PyObject* decide(PyObject* capsule, Fn&& apply) {
  try {
    Scheduler& core = core_of(capsule);
    apply(core);
    return take_decisions(core).release().ptr();
  } catch (py::error_already_set& e) {
    e.restore();
  } catch (const std::invalid_argument& e) {
    PyErr_SetString(PyExc_ValueError, e.what());
  } catch (const std::out_of_range& e) {
    PyErr_SetString(PyExc_IndexError, e.what());
  } catch (const std::exception& e) {
    PyErr_SetString(PyExc_RuntimeError, e.what());
  }
  return nullptr;
}

PyObject* fast_turn_finished(PyObject* capsule, PyObject* const* args, Py_ssize_t nargs) {
  int64_t e, action, cost;
  double now;
  if (!check_nargs("turn_finished", nargs, 4, "episode, action, next_cost, now") ||
      !int_arg(args[0], kI64Min, kI64Max, "episode", &e) || !int_arg(args[1], kI32Min, kI32Max, "action", &action) ||
      !int_arg(args[2], kI64Min, kI64Max, "next_cost", &cost) || !time_arg(args[3], &now)) {
    return nullptr;
  }
  return decide(capsule, [&](Scheduler& s) { s.turn_finished(e, static_cast<int32_t>(action), cost, now); });
}

PyObject* fast_tool_finished(PyObject* capsule, PyObject* const* args, Py_ssize_t nargs) {
  int64_t e, cost;
  double now;
  if (!check_nargs("tool_finished", nargs, 3, "episode, next_cost, now") ||
      !int_arg(args[0], kI64Min, kI64Max, "episode", &e) || !int_arg(args[1], kI64Min, kI64Max, "next_cost", &cost) ||
      !time_arg(args[2], &now)) {
    return nullptr;
  }
  return decide(capsule, [&](Scheduler& s) { s.tool_finished(e, cost, now); });
}

PyObject* fast_advance(PyObject* capsule, PyObject* const* args, Py_ssize_t nargs) {
  double now;
  if (!check_nargs("advance", nargs, 1, "now") || !time_arg(args[0], &now)) return nullptr;
  return decide(capsule, [&](Scheduler& s) { s.advance(now); });
}

PyObject* fast_fail(PyObject* capsule, PyObject* const* args, Py_ssize_t nargs) {
  int64_t e;
  double now;
  if (!check_nargs("fail", nargs, 2, "episode, now") || !int_arg(args[0], kI64Min, kI64Max, "episode", &e) ||
      !time_arg(args[1], &now)) {
    return nullptr;
  }
  return decide(capsule, [&](Scheduler& s) { s.fail(e, now); });
}

PyObject* fast_next_deadline(PyObject* capsule, PyObject* const*, Py_ssize_t nargs) {
  if (!check_nargs("next_deadline", nargs, 0, "")) return nullptr;
  return PyFloat_FromDouble(core_of(capsule).next_deadline());
}

// Static: CPython keeps a pointer to each PyMethodDef for the life of the functions made from it.
PyMethodDef kFastMethods[] = {
    {"turn_finished", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(fast_turn_finished)),
     METH_FASTCALL, "turn_finished(episode, action, next_cost, now) -> decisions"},
    {"tool_finished", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(fast_tool_finished)),
     METH_FASTCALL, "tool_finished(episode, next_cost, now) -> decisions"},
    {"advance", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(fast_advance)), METH_FASTCALL,
     "advance(now) -> decisions"},
    {"fail", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(fast_fail)), METH_FASTCALL,
     "fail(episode, now) -> decisions"},
    {"next_deadline", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(fast_next_deadline)),
     METH_FASTCALL, "next_deadline() -> earliest live time-out in seconds (inf when none)"},
};

}  // namespace

py::list decisions_to_list(const std::vector<Decision>& decisions) {
  PyObject* list = PyList_New(static_cast<Py_ssize_t>(decisions.size()));
  if (list == nullptr) throw py::error_already_set();
  py::list out = py::reinterpret_steal<py::list>(list);
  for (size_t i = 0; i < decisions.size(); ++i) {
    const Decision& d = decisions[i];
    PyObject* tuple = PyTuple_New(5);
    if (tuple == nullptr) throw py::error_already_set();
    PyList_SET_ITEM(list, static_cast<Py_ssize_t>(i), tuple);  // the list owns it from here on
    PyObject* items[5] = {PyLong_FromLong(d.kind), PyLong_FromLongLong(d.episode), PyLong_FromLongLong(d.group),
                          PyLong_FromLong(d.aux), PyFloat_FromDouble(d.time)};
    bool ok = true;
    for (PyObject* item : items) ok = ok && item != nullptr;
    for (Py_ssize_t k = 0; k < 5; ++k) {
      if (ok) {
        PyTuple_SET_ITEM(tuple, k, items[k]);
      } else {
        Py_XDECREF(items[k]);
      }
    }
    if (!ok) throw py::error_already_set();
  }
  return out;
}

py::list take_decisions(Scheduler& s) {
  py::list out = decisions_to_list(s.decisions());
  s.clear_decisions();
  return out;
}

std::vector<Event> events_from_sequence(py::handle events) {
  PyObject* seq = PySequence_Fast(events.ptr(), "events must be a sequence of (code, a, b, c, time) tuples");
  if (seq == nullptr) throw py::error_already_set();
  py::object keep = py::reinterpret_steal<py::object>(seq);
  const Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
  PyObject** items = PySequence_Fast_ITEMS(seq);
  std::vector<Event> out(static_cast<size_t>(n));
  for (Py_ssize_t i = 0; i < n; ++i) {
    PyObject* row = items[i];
    if (!PyTuple_Check(row) || PyTuple_GET_SIZE(row) != 5) {
      throw py::value_error("events[" + std::to_string(i) + "] must be a (code, a, b, c, time) tuple");
    }
    int64_t code, a, b, c;
    double t;
    if (!int_arg(PyTuple_GET_ITEM(row, 0), kI32Min, kI32Max, "code", &code) ||
        !int_arg(PyTuple_GET_ITEM(row, 1), kI64Min, kI64Max, "a", &a) ||
        !int_arg(PyTuple_GET_ITEM(row, 2), kI64Min, kI64Max, "b", &b) ||
        !int_arg(PyTuple_GET_ITEM(row, 3), kI64Min, kI64Max, "c", &c) || !time_arg(PyTuple_GET_ITEM(row, 4), &t)) {
      throw py::error_already_set();
    }
    out[static_cast<size_t>(i)] = Event{static_cast<int32_t>(code), a, b, c, t};
  }
  return out;
}

py::tuple fast_calls(py::object owner) {
  auto* bound = new Bound{&owner.cast<Scheduler&>(), owner.inc_ref().ptr()};
  PyObject* capsule = PyCapsule_New(bound, kCapsuleName, free_bound);
  if (capsule == nullptr) {
    Py_DECREF(bound->owner);
    delete bound;
    throw py::error_already_set();
  }
  py::object keep = py::reinterpret_steal<py::object>(capsule);
  constexpr size_t n = sizeof(kFastMethods) / sizeof(kFastMethods[0]);
  py::tuple out(n);
  for (size_t i = 0; i < n; ++i) {
    PyObject* fn = PyCFunction_New(&kFastMethods[i], capsule);  // holds its own reference to the capsule
    if (fn == nullptr) throw py::error_already_set();
    PyTuple_SET_ITEM(out.ptr(), static_cast<Py_ssize_t>(i), fn);
  }
  return out;
}

}  // namespace sage_fast::sched
