// Rollout scheduler core (see scheduler.h). Every public event follows the same order, which the
// Python fallback copies exactly: check the clock, fire time-outs due by `now` (in deadline
// order), apply the event, activate waiting groups, admit ready turns.
#include "scheduler/scheduler.h"

#include <cmath>
#include <stdexcept>

namespace sage_fast::sched {

Scheduler::Scheduler(const Config& config) : config_(config) {
  if (config.max_seqs < 1) throw std::invalid_argument("max_seqs must be >= 1, got " + std::to_string(config.max_seqs));
  if (config.max_tokens < 1) {
    throw std::invalid_argument("max_tokens must be >= 1, got " + std::to_string(config.max_tokens));
  }
  if (config.max_turns < 1) throw std::invalid_argument("max_turns must be >= 1, got " + std::to_string(config.max_turns));
  if (!(config.tool_timeout >= 0) || !(config.episode_timeout >= 0)) {
    throw std::invalid_argument("tool_timeout and episode_timeout must be >= 0 seconds (0 = none)");
  }
  if (config.max_active_groups < 0) throw std::invalid_argument("max_active_groups must be >= 0 (0 = no limit)");
}

void Scheduler::check_time(double now) {
  if (std::isnan(now)) throw std::invalid_argument("now is NaN; pass the driver clock's time in seconds");
  if (now < now_) {
    throw std::invalid_argument("now went backwards (" + std::to_string(now) + " < " + std::to_string(now_) +
                                "); feed events in time order");
  }
  now_ = now;
}

Scheduler::Episode& Scheduler::episode_at(int64_t episode, const char* what) {
  if (episode < 0 || episode >= static_cast<int64_t>(episodes_.size())) {
    throw std::out_of_range(std::string(what) + ": unknown episode " + std::to_string(episode) + " (have " +
                            std::to_string(episodes_.size()) + ")");
  }
  return episodes_[static_cast<size_t>(episode)];
}

void Scheduler::emit(int32_t kind, int64_t e, int64_t g, int32_t aux, double now) {
  out_.push_back(Decision{kind, e, g, aux, now});
  ++stats_.decisions;
}

void Scheduler::make_ready(int64_t e, double) {
  Episode& ep = episodes_[static_cast<size_t>(e)];
  ep.state = kReady;
  ep.ready_seq = seq_++;
  ready_.emplace(config_.group_priority ? ep.group : 0, ep.ready_seq, e);
}

void Scheduler::finish(int64_t e, int32_t reason, double now) {
  Episode& ep = episodes_[static_cast<size_t>(e)];
  if (ep.state == kGenerating) {
    --stats_.seqs_in_flight;
    stats_.tokens_in_flight -= ep.cost;
  }
  ep.state = kDone;
  ++stats_.done;
  emit(kFinish, e, ep.group, reason, now);
  Group& g = groups_[static_cast<size_t>(ep.group)];
  if (++g.done == g.size) {
    ++stats_.groups_done;
    emit(kGroupComplete, -1, ep.group, 0, now);
    if (g.active) --active_groups_;
  }
}

bool Scheduler::live(const Deadline& d) const {
  const Episode& ep = episodes_[static_cast<size_t>(std::get<2>(d))];
  if (std::get<3>(d) == 0) return ep.state == kInTool && ep.tool_epoch == std::get<4>(d);
  return ep.state != kDone;
}

void Scheduler::expire(double now) {
  while (!deadlines_.empty() && std::get<0>(deadlines_.top()) <= now) {
    const Deadline d = deadlines_.top();
    deadlines_.pop();
    if (!live(d)) continue;
    const double when = std::get<0>(d);
    const int64_t e = std::get<2>(d);
    Episode& ep = episodes_[static_cast<size_t>(e)];
    if (std::get<3>(d) == 0) {
      ++stats_.tool_timeouts;
      emit(kToolTimeout, e, ep.group, ep.turns - 1, when);
      make_ready(e, when);  // the episode goes on with an error result
    } else {
      finish(e, kTimeout, when);
    }
  }
}

void Scheduler::activate_groups(double now) {
  while (next_pending_group_ < static_cast<int64_t>(groups_.size()) &&
         (config_.max_active_groups == 0 || active_groups_ < config_.max_active_groups)) {
    Group& g = groups_[static_cast<size_t>(next_pending_group_++)];
    if (g.done == g.size) continue;  // cancelled while waiting
    g.active = true;
    ++active_groups_;
    for (int64_t e = g.first; e < g.first + g.size; ++e) {
      Episode& ep = episodes_[static_cast<size_t>(e)];
      if (ep.state != kPending) continue;
      if (g.prepare) {
        ep.state = kInTool;  // set-up runs like a tool without a time-out; tool_finished queues turn 0
        emit(kPrepare, e, ep.group, 0, now);
      } else {
        make_ready(e, now);
      }
    }
  }
}

void Scheduler::admit(double now) {
  activate_groups(now);
  while (!ready_.empty() && stats_.seqs_in_flight < config_.max_seqs) {
    const auto [priority, seq, e] = ready_.top();
    Episode& ep = episodes_[static_cast<size_t>(e)];
    if (ep.state != kReady || ep.ready_seq != seq) {  // left the queue meanwhile
      ready_.pop();
      continue;
    }
    // Head-of-line order is kept: a turn too big for the remaining budget waits for room
    // (it is admitted alone when nothing else generates, so it cannot starve).
    if (stats_.seqs_in_flight > 0 && stats_.tokens_in_flight + ep.cost > config_.max_tokens) break;
    ready_.pop();
    ep.state = kGenerating;
    ++ep.turns;
    ++stats_.seqs_in_flight;
    stats_.tokens_in_flight += ep.cost;
    ++stats_.admitted_turns;
    if (!ep.started) {
      ep.started = true;
      if (config_.episode_timeout > 0) deadlines_.emplace(now + config_.episode_timeout, seq_++, e, 1, 0);
    }
    emit(kAdmit, e, ep.group, ep.turns - 1, now);
  }
}

int64_t Scheduler::add_group(int32_t size, int64_t cost, double now, bool prepare) {
  if (size < 1) throw std::invalid_argument("size must be >= 1 episodes, got " + std::to_string(size));
  if (cost < 0) throw std::invalid_argument("cost must be >= 0 tokens, got " + std::to_string(cost));
  check_time(now);
  expire(now);
  const int64_t g = static_cast<int64_t>(groups_.size());
  const int64_t first = static_cast<int64_t>(episodes_.size());
  groups_.push_back(Group{first, size, 0, false, prepare});
  for (int32_t i = 0; i < size; ++i) {
    Episode ep;
    ep.group = g;
    ep.cost = cost;
    episodes_.push_back(ep);
  }
  ++stats_.groups;
  stats_.episodes += size;
  admit(now);
  return g;
}

bool Scheduler::turn_finished(int64_t episode, int32_t action, int64_t next_cost, double now) {
  if (action < kActionAnswer || action > kActionContinue) {
    throw std::invalid_argument("action must be 0 (answer), 1 (tool) or 2 (continue), got " + std::to_string(action));
  }
  if (next_cost < 0) throw std::invalid_argument("next_cost must be >= 0 tokens, got " + std::to_string(next_cost));
  Episode& ep = episode_at(episode, "turn_finished");
  check_time(now);
  expire(now);
  if (ep.state != kGenerating) {
    admit(now);
    return false;
  }
  --stats_.seqs_in_flight;
  stats_.tokens_in_flight -= ep.cost;
  ep.cost = next_cost;
  ep.state = kPending;  // off the engine; every branch below sets the next state
  if (action == kActionAnswer) {
    finish(episode, kAnswered, now);
  } else if (ep.turns >= config_.max_turns) {
    finish(episode, kTurnCap, now);
  } else if (action == kActionTool) {
    ep.state = kInTool;
    ++ep.tool_epoch;
    ++stats_.tool_calls;
    emit(kStartTool, episode, ep.group, ep.turns - 1, now);
    if (config_.tool_timeout > 0) deadlines_.emplace(now + config_.tool_timeout, seq_++, episode, 0, ep.tool_epoch);
  } else {
    make_ready(episode, now);
  }
  admit(now);
  return true;
}

bool Scheduler::tool_finished(int64_t episode, int64_t next_cost, double now) {
  if (next_cost < 0) throw std::invalid_argument("next_cost must be >= 0 tokens, got " + std::to_string(next_cost));
  Episode& ep = episode_at(episode, "tool_finished");
  check_time(now);
  expire(now);
  const bool live_event = ep.state == kInTool;
  if (live_event) {
    ep.cost = next_cost;
    make_ready(episode, now);
  }
  admit(now);
  return live_event;
}

void Scheduler::advance(double now) {
  check_time(now);
  expire(now);
  admit(now);
}

bool Scheduler::fail(int64_t episode, double now) {
  Episode& ep = episode_at(episode, "fail");
  check_time(now);
  expire(now);
  const bool live_event = ep.state != kDone;
  if (live_event) finish(episode, kFailed, now);
  admit(now);
  return live_event;
}

bool Scheduler::cancel(int64_t episode, double now) {
  Episode& ep = episode_at(episode, "cancel");
  check_time(now);
  expire(now);
  const bool live_event = ep.state != kDone;
  if (live_event) finish(episode, kCancelled, now);
  admit(now);
  return live_event;
}

bool Scheduler::finish_episode(int64_t episode, int32_t reason, double now) {
  if (reason < kAnswered || reason > kFailed) {
    throw std::invalid_argument("reason must be 0 (answered) .. 4 (failed), got " + std::to_string(reason));
  }
  Episode& ep = episode_at(episode, "finish");
  check_time(now);
  expire(now);
  const bool live_event = ep.state != kDone;
  if (live_event) finish(episode, reason, now);
  admit(now);
  return live_event;
}

int64_t Scheduler::cancel_group(int64_t group, double now) {
  if (group < 0 || group >= static_cast<int64_t>(groups_.size())) {
    throw std::out_of_range("cancel_group: unknown group " + std::to_string(group));
  }
  check_time(now);
  expire(now);
  const Group g = groups_[static_cast<size_t>(group)];
  int64_t cancelled = 0;
  for (int64_t e = g.first; e < g.first + g.size; ++e) {
    if (episodes_[static_cast<size_t>(e)].state != kDone) {
      finish(e, kCancelled, now);
      ++cancelled;
    }
  }
  admit(now);
  return cancelled;
}

std::vector<Decision> Scheduler::take() {
  std::vector<Decision> out;
  out.swap(out_);
  return out;
}

std::vector<Decision> Scheduler::replay(const std::vector<Event>& events) {
  for (const Event& ev : events) {
    switch (ev.code) {
      case kEvAddGroup: add_group(static_cast<int32_t>(ev.a), ev.b, ev.time, ev.c != 0); break;
      case kEvTurnFinished: turn_finished(ev.a, static_cast<int32_t>(ev.b), ev.c, ev.time); break;
      case kEvToolFinished: tool_finished(ev.a, ev.b, ev.time); break;
      case kEvAdvance: advance(ev.time); break;
      case kEvFail: fail(ev.a, ev.time); break;
      case kEvCancel: cancel(ev.a, ev.time); break;
      case kEvCancelGroup: cancel_group(ev.a, ev.time); break;
      case kEvFinish: finish_episode(ev.a, static_cast<int32_t>(ev.b), ev.time); break;
      default: throw std::invalid_argument("unknown event code " + std::to_string(ev.code));
    }
  }
  return take();
}

double Scheduler::next_deadline() {
  while (!deadlines_.empty() && !live(deadlines_.top())) deadlines_.pop();
  return deadlines_.empty() ? std::numeric_limits<double>::infinity() : std::get<0>(deadlines_.top());
}

int32_t Scheduler::state(int64_t episode) const {
  if (episode < 0 || episode >= static_cast<int64_t>(episodes_.size())) {
    throw std::out_of_range("state: unknown episode " + std::to_string(episode));
  }
  return episodes_[static_cast<size_t>(episode)].state;
}

int32_t Scheduler::turns(int64_t episode) const {
  if (episode < 0 || episode >= static_cast<int64_t>(episodes_.size())) {
    throw std::out_of_range("turns: unknown episode " + std::to_string(episode));
  }
  return episodes_[static_cast<size_t>(episode)].turns;
}

int64_t Scheduler::group_of(int64_t episode) const {
  if (episode < 0 || episode >= static_cast<int64_t>(episodes_.size())) {
    throw std::out_of_range("group_of: unknown episode " + std::to_string(episode));
  }
  return episodes_[static_cast<size_t>(episode)].group;
}

}  // namespace sage_fast::sched
