// Rollout scheduler core: a pure, deterministic state machine for multi-turn RL rollouts.
//
// Episodes move pending -> ready -> generating -> in-tool -> ready ... -> done. The core never
// waits, sleeps or reads a clock: every event carries the time `now`, and every call returns the
// decisions it took (admit a turn, start a tool, a tool or episode time-out, an episode finished,
// a GRPO group complete). The Python driver feeds it events and carries the decisions out, so the
// same event sequence always yields the same decision sequence (sage_fast/rollout/fallback.py
// implements the identical machine in Python; tests compare them decision by decision).
#pragma once

#include <cstdint>
#include <limits>
#include <queue>
#include <string>
#include <tuple>
#include <vector>

namespace sage_fast::sched {

// Numbers are part of the Python API (sage_fast/rollout/types.py mirrors them).
enum DecisionKind : int32_t {
  kAdmit = 0, kStartTool = 1, kToolTimeout = 2, kFinish = 3, kGroupComplete = 4, kPrepare = 5,
};
enum FinishReason : int32_t { kAnswered = 0, kTurnCap = 1, kTimeout = 2, kCancelled = 3, kFailed = 4 };
enum TurnAction : int32_t { kActionAnswer = 0, kActionTool = 1, kActionContinue = 2 };
enum EpisodeState : int32_t { kPending = 0, kReady = 1, kGenerating = 2, kInTool = 3, kDone = 4 };
enum EventCode : int32_t {
  kEvAddGroup = 0, kEvTurnFinished = 1, kEvToolFinished = 2, kEvAdvance = 3, kEvFail = 4, kEvCancel = 5,
  kEvCancelGroup = 6, kEvFinish = 7,
};

struct Config {
  int64_t max_seqs = 64;             // sequences generating at once
  int64_t max_tokens = 1 << 20;      // reserved tokens (prompt + new) generating at once
  int32_t max_turns = 11;            // model calls per episode
  double tool_timeout = 0.0;         // seconds; 0 = none
  double episode_timeout = 0.0;      // seconds from the first admitted turn; 0 = none
  int64_t max_active_groups = 0;     // groups with episodes out of `pending`; 0 = no limit
  bool group_priority = true;        // admit older groups' turns first (else plain ready order)
};

// (kind, episode, group, aux, time); aux = turn index (admit, start-tool), reason (finish), 0 else.
struct Decision {
  int32_t kind;
  int64_t episode;
  int64_t group;
  int32_t aux;
  double time;
};

// (code, a, b, c, time): one recorded event, for replays. add_group: a = size, b = cost, c = prepare;
// turn_finished: a = episode, b = action, c = next cost; tool_finished: a = episode, b = next cost;
// fail / cancel: a = episode; cancel_group: a = group; finish: a = episode, b = reason.
struct Event {
  int32_t code;
  int64_t a, b, c;
  double time;
};

struct Stats {
  int64_t seqs_in_flight = 0, tokens_in_flight = 0, episodes = 0, groups = 0, done = 0, groups_done = 0;
  int64_t admitted_turns = 0, tool_calls = 0, tool_timeouts = 0, decisions = 0;
};

class Scheduler {
 public:
  explicit Scheduler(const Config& config);

  // Adds a GRPO group of `size` episodes whose first turn reserves `cost` tokens; returns the
  // group id (0, 1, ...). Its episodes get the next `size` episode ids. With `prepare`, an
  // episode does not queue its first turn when the group starts: a PREPARE decision tells the
  // driver to set it up (decode its frames), and tool_finished() queues the turn when it is ready.
  int64_t add_group(int32_t size, int64_t cost, double now, bool prepare = false);
  // The episode's turn finished generating: answer (done), tool call, or continue without a tool;
  // `next_cost` is the next turn's reservation. Returns false for a stale event (episode no
  // longer generating: it timed out or was cancelled meanwhile).
  bool turn_finished(int64_t episode, int32_t action, int64_t next_cost, double now);
  bool tool_finished(int64_t episode, int64_t next_cost, double now);
  void advance(double now);
  bool fail(int64_t episode, double now);
  bool cancel(int64_t episode, double now);
  // Ends an episode from outside with `reason` (e.g. the agent loop answered on its own terms).
  bool finish_episode(int64_t episode, int32_t reason, double now);
  int64_t cancel_group(int64_t group, double now);

  std::vector<Decision> take();              // decisions since the last take(), in order
  // The decisions since the last clear, in order, without moving them out: a binding that copies
  // them into its own objects and then calls clear_decisions() keeps the buffer's capacity, so
  // the per-event path allocates nothing on the C++ side.
  const std::vector<Decision>& decisions() const { return out_; }
  void clear_decisions() { out_.clear(); }
  std::vector<Decision> replay(const std::vector<Event>& events);  // all decisions of a trace
  double next_deadline();                    // earliest live time-out (+inf when none)
  int32_t state(int64_t episode) const;
  int32_t turns(int64_t episode) const;
  int64_t group_of(int64_t episode) const;
  const Stats& stats() const { return stats_; }
  const Config& config() const { return config_; }

 private:
  struct Episode {
    int64_t group;
    int32_t state = kPending;
    int32_t turns = 0;
    int64_t cost = 0;       // reservation of the next (or current) turn
    int64_t ready_seq = -1; // identifies its live entry in the ready queue
    int64_t tool_epoch = 0; // identifies its live tool deadline
    bool started = false;
  };
  struct Group {
    int64_t first, size, done = 0;
    bool active = false;
    bool prepare = false;
  };
  // (deadline, seq, episode, kind 0 = tool / 1 = episode, epoch); min-heap on (deadline, seq).
  using Deadline = std::tuple<double, int64_t, int64_t, int32_t, int64_t>;
  // (priority, seq, episode); min-heap.
  using ReadyKey = std::tuple<int64_t, int64_t, int64_t>;

  void check_time(double now);
  bool live(const Deadline& d) const;
  Episode& episode_at(int64_t episode, const char* what);
  void expire(double now);
  void make_ready(int64_t e, double now);
  void finish(int64_t e, int32_t reason, double now);
  void activate_groups(double now);
  void admit(double now);
  void emit(int32_t kind, int64_t e, int64_t g, int32_t aux, double now);

  Config config_;
  std::vector<Episode> episodes_;
  std::vector<Group> groups_;
  std::priority_queue<ReadyKey, std::vector<ReadyKey>, std::greater<ReadyKey>> ready_;
  std::priority_queue<Deadline, std::vector<Deadline>, std::greater<Deadline>> deadlines_;
  int64_t next_pending_group_ = 0;  // groups activate in order
  int64_t active_groups_ = 0;
  int64_t seq_ = 0;
  double now_ = -std::numeric_limits<double>::infinity();
  std::vector<Decision> out_;
  Stats stats_;
};

}  // namespace sage_fast::sched
