"""Early-stopping policies: hand-made learning curves whose right decision is known."""

import json
import math
import random

import numpy as np
import pytest

from prefect_hpo.errors import SpecError
from prefect_hpo.optim.stopping import (
    ASHAPolicy,
    HyperbandPolicy,
    MedianPolicy,
    MetricHistory,
    PercentilePolicy,
    StoppingPolicy,
    ThresholdPolicy,
    available_policies,
    make_policy,
)

NAN, INF = math.nan, math.inf


def hist(index, values, running=True):
    """A history from ``{step: value}`` or a list (steps 1, 2, ...)."""
    if not isinstance(values, dict):
        values = {step: v for step, v in enumerate(values, start=1)}
    return MetricHistory(index, values, running)


def flat(index, value, steps, running=False):
    return hist(index, [value] * steps, running)


def stopped(policy, histories, minimize=True):
    return [d.index for d in policy.decide(histories, minimize)]


def neg(histories):
    """The same curves for a maximized metric: every decision must be the same."""
    return [MetricHistory(h.index, {s: -v for s, v in h.values.items()}, h.running) for h in histories]


# ---- percentile / median ---------------------------------------------------------------------


def test_median_stops_a_trial_whose_best_is_worse_than_the_median_of_running_averages():
    others = [flat(0, 1.0, 4), flat(1, 2.0, 4), flat(2, 3.0, 4)]  # running averages 1, 2, 3: median 2
    policy = MedianPolicy()
    for minimize, curves in ((True, others), (False, neg(others))):
        sign = 1 if minimize else -1
        bad = hist(7, [sign * v for v in (5.0, 4.0, 3.0, 2.5)])
        tied = hist(7, [sign * v for v in (5.0, 2.0, 4.0, 4.0)])  # best 2.0 == the median: continues
        good = hist(7, [sign * v for v in (5.0, 4.0, 1.5, 6.0)])
        [decision] = policy.decide([*curves, bad], minimize)
        assert decision.index == 7
        assert decision.reason == (
            f"best value so far {sign * 2.5:.4g} at step 4 is worse than the median ({sign * 2.0:.4g}) "
            "of 3 other trials' running averages at step 4"
        )
        assert stopped(policy, [*curves, tied], minimize) == []
        assert stopped(policy, [*curves, good], minimize) == []


def test_percentile_keeps_the_best_p_percent_whichever_way_the_metric_goes():
    others = [flat(i, float(i + 1), 3) for i in range(5)]  # averages 1..5
    policy = PercentilePolicy(percentile=25.0)
    # minimize: cutoff = 25th percentile = 2.0; maximize: cutoff = 75th percentile = 4.0
    assert stopped(policy, [*others, hist(9, [3.0, 2.0, 2.5])], minimize=True) == []
    assert stopped(policy, [*others, hist(9, [3.0, 2.1, 2.5])], minimize=True) == [9]
    assert stopped(policy, [*others, hist(9, [1.0, 4.0, 2.0])], minimize=False) == []
    assert stopped(policy, [*others, hist(9, [1.0, 3.9, 2.0])], minimize=False) == [9]
    [decision] = policy.decide([*others, hist(9, [3.0, 2.1, 2.5])], True)
    assert "best-25% cutoff (2)" in decision.reason and "5 other trials" in decision.reason
    assert PercentilePolicy(percentile=100.0).decide([*others, hist(9, [5.0])], True) == []
    assert stopped(PercentilePolicy(percentile=100.0), [*others, hist(9, [5.5])]) == [9]


def test_percentile_compares_with_running_averages_not_the_others_latest_values():
    # The others end at 1.0 but averaged 7.75 over steps 1..4; a best of 5.0 is better than that.
    others = [hist(i, [10.0, 10.0, 10.0, 1.0], running=False) for i in range(3)]
    assert stopped(MedianPolicy(), [*others, hist(3, [9.0, 5.0, 6.0, 6.0])]) == []
    # ... and only the others' values up to the trial's step count: at step 2 their average is 10.
    assert stopped(MedianPolicy(), [*others, hist(3, [11.0, 9.5])]) == []
    assert stopped(MedianPolicy(), [*others, hist(3, [11.0, 10.5])]) == [3]


def test_percentile_with_missing_steps():
    others = [hist(i, [float(i + 1)] * 10, running=False) for i in range(3)]  # every step 1..10
    sparse = hist(5, {1: 9.0, 3: 4.0, 7: 2.5})  # last step 7: averages at 7 are 1, 2, 3
    [decision] = MedianPolicy().decide([*others, sparse], True)
    assert "2.5 at step 7" in decision.reason
    assert stopped(MedianPolicy(), [*others, hist(5, {1: 9.0, 3: 2.0, 7: 4.0})]) == []  # best 2.0 ties
    # Others that skip steps are averaged over what they reported up to the step...
    gappy = [hist(i, {2: 1.0 + i, 9: 100.0}, running=False) for i in range(3)]  # averages at 7: 1, 2, 3
    assert stopped(MedianPolicy(), [*gappy, sparse]) == [5]
    # ... and one that reported nothing up to the step gives no average: too little evidence.
    late = [hist(i, {8: 0.0, 9: 0.0}, running=False) for i in range(3)]
    assert stopped(MedianPolicy(), [*late, sparse]) == []


def test_percentile_needs_min_trials_others_that_got_as_far():
    curve = [5.0, 5.0, 5.0]
    two = [flat(0, 1.0, 3), flat(1, 1.0, 3)]
    assert stopped(MedianPolicy(), [*two, hist(2, curve)]) == []
    assert stopped(MedianPolicy(min_trials=2), [*two, hist(2, curve)]) == [2]
    # A third trial only counts once it has reached the step the judged trial is at.
    assert stopped(MedianPolicy(), [*two, flat(3, 1.0, 2), hist(2, curve)]) == []
    assert stopped(MedianPolicy(), [*two, flat(3, 1.0, 3), hist(2, curve)]) == [2]
    # Other running trials are evidence too (all states count), and judged themselves.
    running = [hist(i, [1.0, 1.0, 1.0, 1.0]) for i in range(3)]
    assert stopped(MedianPolicy(), [*running, hist(3, curve)]) == [3]


def test_percentile_warm_up():
    others = [flat(i, 1.0, 6) for i in range(3)]
    policy = MedianPolicy(min_steps=5)
    assert stopped(policy, [*others, hist(3, [9.0] * 4)]) == []
    assert stopped(policy, [*others, hist(3, {1: 9.0, 4: 9.0})]) == []
    assert stopped(policy, [*others, hist(3, [9.0] * 5)]) == [3]
    assert stopped(policy, [*others, hist(3, {1: 9.0, 6: 9.0})]) == [3]


def test_percentile_nan_values():
    others = [flat(0, 1.0, 3), flat(1, 2.0, 3), hist(2, [3.0, NAN, 3.0], running=False)]
    # a NaN among the others is left out of its average; a diverged other does not count.
    assert stopped(MedianPolicy(), [*others, hist(3, [2.0, NAN, 2.0])]) == []
    assert stopped(MedianPolicy(), [*others, hist(3, [NAN, 2.1, INF])]) == [3]
    [decision] = MedianPolicy().decide([*others, hist(3, [NAN, -INF, INF])], True)
    assert decision.index == 3 and "diverged" in decision.reason
    for minimize in (True, False):
        assert stopped(MedianPolicy(), [*others, hist(3, [NAN, NAN, NAN])], minimize) == [3]
    diverged_others = [flat(0, 1.0, 3), flat(1, 2.0, 3), flat(2, NAN, 3)]
    assert stopped(MedianPolicy(), [*diverged_others, hist(3, [NAN, NAN, NAN])]) == []  # only 2 others


def test_percentile_never_stops_finished_trials_and_accepts_empty_input():
    others = [flat(i, 1.0, 3) for i in range(3)]
    for policy in (MedianPolicy(), PercentilePolicy(percentile=10.0)):
        assert policy.decide([], True) == []
        assert stopped(policy, [*others, flat(3, 99.0, 3), flat(4, NAN, 3)]) == []
        assert stopped(policy, [*others, hist(5, {}), hist(6, {}, running=False)]) == []
        assert policy.state_dict() == {}


def test_median_is_percentile_50_and_refuses_a_percentile():
    assert MedianPolicy().percentile == 50.0 and isinstance(MedianPolicy(), PercentilePolicy)
    assert MedianPolicy().describe() == "median(min_steps=1, min_trials=3, max_steps=None)"
    assert PercentilePolicy(percentile=25).describe() == "percentile(percentile=25, min_steps=1, min_trials=3, max_steps=None)"
    with pytest.raises(TypeError):
        MedianPolicy(percentile=40.0)
    with pytest.raises(SpecError, match="median"):
        make_policy("median", percentile=40.0)


# ---- threshold -------------------------------------------------------------------------------


def test_threshold_judges_the_latest_value_strictly():
    policy = ThresholdPolicy(threshold=1.0)
    histories = [
        hist(0, [3.0, 1.5]),  # latest above: stop
        hist(1, [3.0, 1.0]),  # equal: continues
        hist(2, [0.5, 1.2]),  # was good, now bad: the latest counts
        hist(3, [3.0, 0.9]),
        hist(4, [9.0, 9.0], running=False),  # finished: never stopped
    ]
    assert stopped(policy, histories, minimize=True) == [0, 2]
    maximize = ThresholdPolicy(threshold=-1.0)
    assert stopped(maximize, neg(histories), minimize=False) == [0, 2]
    [decision, _] = policy.decide(histories, True)
    assert decision.reason == "latest value 1.5 at step 2 is worse than the threshold 1 (must be <= 1)"


def test_threshold_warm_up_missing_steps_nan_and_empty():
    policy = ThresholdPolicy(threshold=1.0, min_steps=3)
    assert stopped(policy, [hist(0, [5.0, 5.0])]) == []
    assert stopped(policy, [hist(0, {1: 5.0, 4: 5.0})]) == [0]
    assert stopped(policy, [hist(0, {1: 5.0, 4: 0.5})]) == []
    for value in (NAN, INF, -INF):
        for minimize in (True, False):
            [decision] = policy.decide([hist(0, {3: value})], minimize)
            assert "diverged" in decision.reason
    assert stopped(policy, [hist(0, {2: 0.5, 3: NAN}, running=False)]) == []
    assert policy.decide([], True) == [] and policy.decide([hist(0, {})], False) == []


def test_threshold_is_required():
    with pytest.raises(SpecError, match=r"^stopping\.threshold: required"):
        ThresholdPolicy()
    with pytest.raises(SpecError, match=r"^stopping\.threshold: required"):
        make_policy("threshold", min_steps=2)
    with pytest.raises(SpecError, match=r"^stopping\.threshold: must be a finite number"):
        ThresholdPolicy(threshold=NAN)
    assert ThresholdPolicy(threshold=0.25).describe() == "threshold(threshold=0.25, min_steps=1, max_steps=None)"


# ---- ASHA ------------------------------------------------------------------------------------


class Script:
    """Feeds a policy one decide() call at a time, as the flow does: stopped trials stop running."""

    def __init__(self, policy, minimize=True):
        self.policy, self.minimize = policy, minimize
        self.curves: dict[int, dict[int, float]] = {}
        self.finished: set[int] = set()

    def report(self, index, values):
        self.curves.setdefault(index, {}).update(values)

    def decide(self, order=None):
        indices = order if order is not None else sorted(self.curves)
        histories = [MetricHistory(i, dict(self.curves[i]), i not in self.finished) for i in indices]
        decisions = self.policy.decide(histories, self.minimize)
        self.finished.update(d.index for d in decisions)
        return decisions

    def step(self, index, values):
        self.report(index, values)
        return [d.index for d in self.decide()]


def test_asha_rungs_and_settings():
    policy = ASHAPolicy(max_steps=27)
    assert policy.rungs == [1, 3, 9]
    assert ASHAPolicy(min_steps=2, reduction_factor=2, max_steps=17).rungs == [2, 4, 8, 16]
    assert ASHAPolicy(min_steps=1, reduction_factor=3, max_steps=10).rungs == [1, 3, 9]
    assert ASHAPolicy(min_steps=1, reduction_factor=3, max_steps=2).rungs == [1]
    assert policy.describe() == "asha(min_steps=1, reduction_factor=3, max_steps=27)"
    assert policy.resource_for(0) == policy.resource_for(41) == 27


def test_asha_rung_by_rung():
    s = Script(ASHAPolicy(min_steps=1, reduction_factor=3, max_steps=27))
    assert s.step(0, {1: 5.0}) == []  # the first arrival at a rung always continues
    assert s.step(1, {1: 4.0}) == []  # n=2: only the best 1 continues, and it is the best
    assert s.step(2, {1: 6.0}) == [2]  # n=3, rank 3 > 1
    assert s.step(3, {1: 4.5}) == []  # n=4: best ceil(4/3)=2 continue; rank 2
    assert s.step(4, {1: 4.5}) == []  # n=5, tied with rank 2: shares it
    assert s.step(5, {1: 4.6}) == [5]  # n=6, rank 4 > 2
    # Trial 0 now ranks 5 of 6 at rung 1, but it was judged there already: never re-judged.
    assert s.step(0, {2: 3.5}) == []
    assert s.step(0, {3: 3.0}) == []  # the first at rung 3
    assert s.step(1, {2: 3.9, 3: 3.5}) == [1]  # rung 3: n=2, rank 2 > 1
    # Trial 3 jumps over rungs 3 and 9 in one call: judged at each, continues at both.
    assert s.step(3, {4: 2.0, 9: 1.0, 10: 0.9}) == []
    # Trial 4 jumps too but fails at rung 3 (n=4, rank 3 > 2): stopped there, never recorded at 9.
    s.report(4, {5: 3.2, 9: 0.5})
    [decision] = s.decide()
    assert decision.index == 4
    assert decision.reason == "value 3.2 at rung 3 (step 5) ranks 3 of 4 trials; only the best 2 (1/3) continue"
    state = s.policy.state_dict()
    assert state["rungs"]["1"] == {"0": 5.0, "1": 4.0, "2": 6.0, "3": 4.5, "4": 4.5, "5": 4.6}
    assert state["rungs"]["3"] == {"0": 3.0, "1": 3.5, "3": 2.0, "4": 3.2}
    assert state["rungs"]["9"] == {"3": 1.0}
    assert state["stopped"] == {"2": 1, "5": 1, "1": 3, "4": 3}
    # Later calls with nothing new reaching a rung stop nobody.
    assert s.step(0, {5: 2.9, 6: 2.8}) == [] and s.decide() == []


def test_asha_maximize_mirrors_minimize():
    s = Script(ASHAPolicy(max_steps=27), minimize=False)
    assert s.step(0, {1: -5.0}) == []
    assert s.step(1, {1: -4.0}) == []
    assert s.step(2, {1: -6.0}) == [2]
    assert s.step(3, {1: -4.0}) == []  # n=4, tied with the best
    assert s.step(4, {1: -4.5}) == [4]  # n=5, keep 2: ranks 3


def test_asha_arrivals_in_one_call_are_judged_together():
    # Two trials reach rung 1 between the same two polls: each is ranked against both, so the
    # lower index gets no free pass as "first arrival", whatever order the histories come in.
    for worse, better in ((6, 7), (7, 6)):
        s = Script(ASHAPolicy(max_steps=27))
        s.report(worse, {1: 2.0})
        s.report(better, {1: 1.0})
        assert [d.index for d in s.decide(order=[7, 6])] == [worse]
    # Four arrive together: the best ceil(4/3) = 2 continue.
    s = Script(ASHAPolicy(max_steps=27))
    for index, value in enumerate([3.0, 1.0, 4.0, 2.0]):
        s.report(index, {1: value})
    assert [d.index for d in s.decide()] == [0, 2]


def test_asha_missing_steps_use_the_first_value_at_or_after_the_rung():
    s = Script(ASHAPolicy(max_steps=27))
    assert s.step(0, {2: 1.0}) == []  # rung 1 recorded from step 2
    assert s.step(1, {2: 0.5, 4: 9.0}) == []  # rung 1 from step 2 (best); rung 3 from step 4 (first)
    assert s.step(2, {7: 0.7}) == [2]  # rung 1 (n=3): ranks 2 > 1, so never reaches rung 3
    assert s.policy.state_dict()["rungs"] == {"1": {"0": 1.0, "1": 0.5, "2": 0.7}, "3": {"1": 9.0}, "9": {}}


def test_asha_nan_ranks_last_and_finished_trials_are_evidence_only():
    s = Script(ASHAPolicy(max_steps=27))
    assert s.step(0, {1: NAN}) == []  # first arrival, even a diverged one
    assert s.step(1, {1: 3.0}) == []  # n=2, beats the NaN
    assert s.step(2, {1: INF}) == [2]  # n=3, non-finite: ranks with the NaN, behind 3.0
    assert json.loads(json.dumps(s.policy.state_dict(), allow_nan=False))["rungs"]["1"] == {"0": None, "1": 3.0, "2": None}
    # A resumed flow without the state: finished trials are recorded (never stopped), in index order.
    policy = ASHAPolicy(max_steps=27)
    histories = [hist(0, [1.0] * 5, running=False), hist(1, [2.0] * 5, running=False), hist(2, [3.0])]
    assert stopped(policy, histories) == [2]  # rung 1, n=3: rank 3; trial 1 (rank 2) finished: kept
    assert policy.state_dict()["rungs"]["3"] == {"0": 1.0, "1": 2.0}
    assert stopped(policy, [hist(3, [NAN] * 4, running=False)]) == []


def test_asha_a_trial_stopped_but_still_running_is_stopped_again_not_rejudged():
    policy = ASHAPolicy(max_steps=27)
    assert stopped(policy, [hist(0, [1.0]), hist(1, [2.0])]) == [1]
    # The kill has not landed: trial 1 still runs and reached rung 3, where it would be first.
    [decision] = policy.decide([hist(0, [1.0]), hist(1, [2.0, 2.0, 0.1])], True)
    assert decision.index == 1 and "already stopped at rung 1" in decision.reason
    assert policy.state_dict()["rungs"]["3"] == {}
    # Reported as finished (stopped) it is not recorded above the rung it was stopped at.
    assert stopped(policy, [hist(1, [2.0] * 10, running=False)]) == []
    assert policy.state_dict()["rungs"]["3"] == {} and policy.state_dict()["rungs"]["9"] == {}


def test_asha_state_round_trip_decides_like_the_original():
    original = ASHAPolicy(min_steps=1, reduction_factor=2, max_steps=16)
    rng = random.Random(3)
    curves = {i: [rng.uniform(0, 10) if rng.random() > 0.1 else NAN for _ in range(16)] for i in range(12)}
    finished: set[int] = set()

    def histories(t):
        return [hist(i, curves[i][: max(0, t - i)], running=i not in finished) for i in range(12)]

    for t in range(8):
        finished.update(stopped(original, histories(t)))
    saved = json.dumps(original.state_dict(), allow_nan=False)
    restored = ASHAPolicy(min_steps=1, reduction_factor=2, max_steps=16)
    restored.load_state_dict(json.loads(saved))
    assert restored.state_dict() == json.loads(saved)
    for t in range(8, 30):
        a, b = original.decide(histories(t), True), restored.decide(histories(t), True)
        assert a == b
        finished.update(d.index for d in a)
    assert len(finished) > 3, "the script must actually stop trials"


def test_asha_load_ignores_rungs_these_settings_do_not_have():
    policy = ASHAPolicy(max_steps=27)
    policy.load_state_dict({"rungs": {"1": {"0": 1.0}, "2": {"5": 1.0}}, "stopped": {}})
    assert policy.state_dict() == {"rungs": {"1": {"0": 1.0}, "3": {}, "9": {}}, "stopped": {}}
    policy.load_state_dict({})
    assert policy.state_dict() == ASHAPolicy(max_steps=27).state_dict()


# ---- Hyperband -------------------------------------------------------------------------------


def test_hyperband_brackets():
    policy = HyperbandPolicy(min_steps=1, reduction_factor=3, max_steps=27)
    assert policy.s_max == 3 and policy.bracket_sizes == [27, 12, 6, 4]
    assert policy.brackets == [[1, 3, 9], [3, 9], [9], []]
    assert policy.describe() == "hyperband(min_steps=1, reduction_factor=3, max_steps=27)"
    assert policy.resource_for(5) == 27
    assert HyperbandPolicy(max_steps=243).s_max == 5  # math.log(243, 3) is 4.999999999999999
    assert HyperbandPolicy(min_steps=10, reduction_factor=10, max_steps=10_000).s_max == 3
    # max_steps not a power of eta: the last bracket still never stops.
    uneven = HyperbandPolicy(max_steps=10)
    assert uneven.s_max == 2 and uneven.bracket_sizes == [9, 5, 3] and uneven.brackets == [[1, 3, 9], [3, 9], []]


@pytest.mark.parametrize("settings", [dict(max_steps=27), dict(max_steps=10), dict(min_steps=2, reduction_factor=2, max_steps=64)])
def test_hyperband_assignment_follows_n_s_and_interleaves(settings):
    policy = HyperbandPolicy(**settings)
    period = sum(policy.bracket_sizes)
    counts = np.bincount([policy.bracket_of(i) for i in range(5 * period)], minlength=policy.s_max + 1)
    assert counts.tolist() == [5 * n for n in policy.bracket_sizes]
    # Interleaved, not in blocks: bracket s first shows up within the first period / n_s trials.
    schedule = [policy.bracket_of(i) for i in range(period)]
    assert all(schedule.index(s) < -(-period // n) for s, n in enumerate(policy.bracket_sizes))
    assert [HyperbandPolicy(**settings).bracket_of(i) for i in (40, 3, 0)] == [policy.bracket_of(i) for i in (40, 3, 0)]


def test_hyperband_first_trials():
    assert [HyperbandPolicy(max_steps=27).bracket_of(i) for i in range(8)] == [0, 1, 0, 2, 0, 3, 0, 1]


def _random_curves(seed, n, steps):
    rng = random.Random(seed)
    return {i: [rng.uniform(0, 10) for _ in range(steps)] for i in range(n)}


def test_hyperband_bracket_s_max_never_stops_and_bracket_0_is_asha():
    hb = HyperbandPolicy(max_steps=27)
    asha = ASHAPolicy(max_steps=27)
    curves = _random_curves(1, 60, 27)
    bracket0 = [i for i in range(60) if hb.bracket_of(i) == 0]
    last = [i for i in range(60) if hb.bracket_of(i) == hb.s_max]
    stopped_hb: set[int] = set()
    stopped_asha: set[int] = set()
    for t in range(0, 60, 2):
        histories = [hist(i, curves[i][: max(0, t - i // 3)], running=i not in stopped_hb) for i in range(60)]
        hb_decisions = hb.decide(histories, True)
        assert all(hb.bracket_of(d.index) < hb.s_max and "hyperband bracket" in d.reason for d in hb_decisions)
        stopped_hb.update(d.index for d in hb_decisions)
        sub = [hist(i, curves[i][: max(0, t - i // 3)], running=i not in stopped_asha) for i in bracket0]
        asha_decisions = asha.decide(sub, True)
        stopped_asha.update(d.index for d in asha_decisions)
        assert [(d.index, d.reason) for d in hb_decisions if d.index in bracket0] == [
            (d.index, f"hyperband bracket 0 of 0..3 (rungs 1, 3, 9): {d.reason}") for d in asha_decisions
        ]
    assert stopped_asha and not stopped_hb & set(last)
    assert stopped_hb - set(bracket0), "the middle brackets stop trials too"


def test_hyperband_bracket_1_starts_judging_at_its_first_rung():
    hb = HyperbandPolicy(max_steps=27)
    a, b = [i for i in range(20) if hb.bracket_of(i) == 1][:2]  # 1 and 7
    # Both terrible at step 1 and 2: bracket 1 has no rung there.
    assert stopped(hb, [hist(a, [1.0, 1.0]), hist(b, [9.0, 9.0])]) == []
    assert stopped(hb, [hist(a, [1.0, 1.0, 1.0]), hist(b, [9.0, 9.0])]) == []
    assert stopped(hb, [hist(a, [1.0, 1.0, 1.0]), hist(b, [9.0, 9.0, 9.0])]) == [b]


def test_hyperband_state_round_trip():
    settings = dict(min_steps=1, reduction_factor=2, max_steps=16)
    original = HyperbandPolicy(**settings)
    curves = _random_curves(5, 40, 16)
    curves[3][:] = [NAN] * 16

    def histories(t):
        return [hist(i, curves[i][: max(0, t - i // 2)]) for i in range(40)]

    for t in range(10):
        original.decide(histories(t), False)
    restored = HyperbandPolicy(**settings)
    restored.load_state_dict(json.loads(json.dumps(original.state_dict(), allow_nan=False)))
    for t in range(10, 40):
        assert original.decide(histories(t), False) == restored.decide(histories(t), False)


# ---- settings, registry, conformance ---------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "settings", "message"),
    [
        ("percentile", dict(percentile=0.0), r"^stopping\.percentile: must be in \(0, 100\], got 0"),
        ("percentile", dict(percentile=100.5), r"^stopping\.percentile: "),
        ("percentile", dict(percentile="50"), r"^stopping\.percentile: "),
        ("percentile", dict(min_trials=0), r"^stopping\.min_trials: must be an int >= 1, got 0"),
        ("median", dict(min_steps=0), r"^stopping\.min_steps: must be an int >= 1, got 0"),
        ("median", dict(min_steps=True), r"^stopping\.min_steps: "),
        ("median", dict(min_steps=4, max_steps=3), r"^stopping\.max_steps: must be an int >= 4, got 3"),
        ("threshold", dict(threshold=1.0, min_steps=1.5), r"^stopping\.min_steps: "),
        ("threshold", dict(threshold="x"), r"^stopping\.threshold: "),
        ("asha", dict(max_steps=27, reduction_factor=1), r"^stopping\.reduction_factor: must be an int >= 2, got 1$"),
        ("asha", dict(), r"^stopping\.max_steps: required"),
        ("asha", dict(min_steps=3, max_steps=3), r"^stopping\.max_steps: must be an int > min_steps \(3\), got 3"),
        ("asha", dict(min_steps=0, max_steps=3), r"^stopping\.min_steps: "),
        ("hyperband", dict(), r"^stopping\.max_steps: required"),
        ("hyperband", dict(max_steps=2), r"^stopping\.max_steps: hyperband needs max_steps >= "),
        ("hyperband", dict(max_steps=27, reduction_factor=2.0), r"^stopping\.reduction_factor: "),
    ],
)
def test_settings_errors_name_the_field(name, settings, message):
    with pytest.raises(SpecError, match=message):
        make_policy(name, **settings)


@pytest.mark.parametrize(
    ("name", "settings"),
    [
        ("median", dict(percentile=30.0)),
        ("median", dict(threshold=1.0)),
        ("percentile", dict(reduction_factor=3)),
        ("threshold", dict(threshold=1.0, min_trials=3)),
        ("asha", dict(max_steps=27, percentile=50.0)),
        ("hyperband", dict(max_steps=27, min_trials=2)),
        ("none", dict(min_steps=2)),
    ],
)
def test_make_policy_refuses_settings_a_policy_does_not_use(name, settings):
    with pytest.raises(SpecError, match=rf"^stopping: policy {name!r} does not take these settings"):
        make_policy(name, **settings)


def test_make_policy_builds_each_policy():
    assert {"none", "median", "percentile", "threshold", "asha", "hyperband"} <= set(available_policies())
    assert isinstance(make_policy("median", min_steps=2, min_trials=5), MedianPolicy)
    assert make_policy("percentile", percentile=10, min_steps=3, min_trials=2, max_steps=30).percentile == 10.0
    assert make_policy("threshold", threshold=2, min_steps=4, max_steps=8).threshold == 2.0
    assert make_policy("asha", min_steps=2, reduction_factor=4, max_steps=64).rungs == [2, 8, 32]
    assert make_policy("hyperband", min_steps=1, reduction_factor=2, max_steps=8).brackets == [[1, 2, 4], [2, 4], [4], []]
    assert make_policy("percentile", max_steps=20).resource_for(3) == 20
    with pytest.raises(SpecError, match=r"^stopping\.policy: 'bogus' is unknown"):
        make_policy("bogus")


SENSIBLE_SETTINGS = {
    "percentile": dict(percentile=30.0, min_trials=2),
    "median": dict(min_trials=2),
    "threshold": dict(threshold=6.0, min_steps=2),
    "asha": dict(min_steps=1, reduction_factor=2, max_steps=12),
    "hyperband": dict(min_steps=1, reduction_factor=2, max_steps=12),
}


def _random_histories(rng, t, curves):
    out = []
    for index, (curve, running, start) in curves.items():
        prefix = {step: v for step, v in curve.items() if step <= t - start}
        out.append(MetricHistory(index, prefix, running or t < 6))
    rng.shuffle(out)
    return out


@pytest.mark.parametrize("name", available_policies())
@pytest.mark.parametrize("minimize", [True, False])
def test_every_policy_conforms(name, minimize):
    rng = random.Random(17)
    curves = {}
    for index in range(25):
        steps = sorted(rng.sample(range(1, 15), rng.randint(0, 12)))
        values = {s: rng.choice([NAN, INF, -INF]) if rng.random() < 0.08 else rng.gauss(5.0, 2.0) for s in steps}
        curves[index] = (values, rng.random() < 0.7, rng.randint(0, 5))
    settings = SENSIBLE_SETTINGS.get(name, {})
    policy = make_policy(name, **settings)
    assert isinstance(policy, StoppingPolicy) and policy.describe().startswith(name)
    assert policy.decide([], minimize) == []
    assert policy.decide([MetricHistory(0, {}, True), MetricHistory(1, {}, False)], minimize) == []
    total = 0
    for t in range(0, 22):
        histories = _random_histories(rng, t, curves)
        decisions = policy.decide(histories, minimize)
        running = {h.index for h in histories if h.running}
        indices = [d.index for d in decisions]
        assert indices == sorted(set(indices)) and set(indices) <= running
        assert all(isinstance(d.reason, str) and d.reason for d in decisions)
        total += len(decisions)
        state = json.loads(json.dumps(policy.state_dict(), allow_nan=False))
        if t == 12:  # from here on a restored copy must decide exactly like the original
            twin = make_policy(name, **settings)
            twin.load_state_dict(state)
        if t > 12:
            assert twin.decide(histories, minimize) == decisions
    if name in SENSIBLE_SETTINGS:
        assert total > 0, "the random curves should make every real policy stop something"
