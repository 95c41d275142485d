// The rollout scheduler's per-event Python calls without pybind11's dispatcher (METH_FASTCALL).
//
// A driver calls the scheduler once per event (a turn finished, a tool returned) and once for
// the next time-out; the core decides in ~0.1 us, but pybind11's generic dispatch and casts cost
// several times that per call. These functions parse their few int/float arguments with the
// CPython API directly and build the decision tuples the same way, so the boundary costs about
// as much as the decision. Same names, arguments, results and errors as the pybind11 methods
// (ValueError for bad values, IndexError for an unknown episode, TypeError for bad types).
#pragma once

#include <pybind11/pybind11.h>

#include <vector>

#include "scheduler/scheduler.h"

namespace sage_fast::sched {

// Decisions as a list of (kind, episode, group, aux, time) tuples.
pybind11::list decisions_to_list(const std::vector<Decision>& decisions);

// The decisions the last event took, as a list; the core's buffer is cleared, its capacity kept.
pybind11::list take_decisions(Scheduler& s);

// Events from a sequence of (code, a, b, c, time) tuples, parsed without pybind11's casters.
std::vector<Event> events_from_sequence(pybind11::handle events);

// (turn_finished, tool_finished, advance, fail, next_deadline) as builtin functions bound to
// `owner` (a RolloutScheduler), which they keep alive.
pybind11::tuple fast_calls(pybind11::object owner);

}  // namespace sage_fast::sched
