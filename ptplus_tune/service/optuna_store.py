"""Where a study's Optuna trials live, and the searcher that proposes from them.

A local study keeps them in `optuna.db` (sqlite) next to its experiment. On a cluster the head's PostgreSQL holds
them instead (`--optuna-storage postgresql+psycopg2://…/optuna`, which `cluster.yaml` makes the default through
PTPLUS_OPTUNA_STORAGE): one database for every study, so `optuna-dashboard URL` on the head shows them all and
nothing relies on sqlite over NFS. The URL is saved with the study, so `--resume` needs nothing else.
"""

from __future__ import annotations

import logging
import random
import threading
import time

import optuna
from ray.tune.search.optuna import OptunaSearch

from ptplus_tune.errors import PTPlusError, first_line

log = logging.getLogger(__name__)
STORAGE_ENV = "PTPLUS_OPTUNA_STORAGE"


def display_url(url: str) -> str:
    """The URL without its password, for messages."""
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return url


def open_storage(url: str):
    """An Optuna RDB storage (its tables created on first use); one clear line when it cannot be opened."""
    import optuna

    for attempt in range(3):
        try:
            return optuna.storages.RDBStorage(url)
        except ModuleNotFoundError as exc:
            raise PTPlusError(f"the Optuna storage {display_url(url)} needs the Python package {exc.name!r}; install "
                              f"it (PostgreSQL: pip install psycopg2-binary)") from exc
        except Exception as exc:
            # Two studies starting at once on a new database both create its tables; the loser sees a duplicate.
            if attempt < 2 and any(word in str(exc) for word in ("already exists", "duplicate key")):
                time.sleep(1.0 + random.random())
                continue
            raise PTPlusError(f"the Optuna storage {display_url(url)} cannot be opened "
                              f"({first_line(getattr(exc, 'orig', None) or exc, limit=1000)})"
                              f"; check --optuna-storage (a PostgreSQL database must exist: createdb optuna)") from exc


def check_new_study(url: str, name: str) -> None:
    import optuna

    storage = open_storage(url)
    if any(s.study_name == name for s in optuna.get_all_study_summaries(storage, include_best_trial=False)):
        raise PTPlusError(f"the Optuna storage {display_url(url)} already has a study named {name!r}; choose another "
                          f"--name")


class NSGAIISampler(optuna.samplers.NSGAIISampler):
    """Optuna's NSGA-II, picklable: Tune pickles the searcher with the study's state (and again on every save), and
    Optuna's genetic samplers hold a thread lock, which cannot be pickled; a restored sampler gets a new one."""

    def __getstate__(self):
        return {k: v for k, v in self.__dict__.items() if k != "_thread_lock"}

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._thread_lock = threading.Lock()


class StudySearch(OptunaSearch):
    """OptunaSearch that proposes nothing once the study's time budget forbids new trials (service.budget), and,
    when a study is resumed, closes the Optuna trials its killed driver left RUNNING: those Tune started after it last
    saved its state. Tune proposes their configurations again as new trials, so they would otherwise stay RUNNING in
    the dashboard forever."""

    max_steps: int | None = None  # the study's budget per trial (set by build_searcher)

    # With several objectives a trial ASHA stopped is PRUNED in Optuna, not COMPLETE with a lower rung's values
    # (what OptunaSearch records): the Pareto front and MOTPE then see only trials that ran their whole budget.
    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        if (isinstance(self.metric, list) and result and self.max_steps is not None
                and result.get("step", 0) < self.max_steps):
            result = None  # OptunaSearch tells a trial without values that did not fail as PRUNED
        super().on_trial_complete(trial_id, result, error)

    # A configuration identical to one already run or running is not trained again: TPE, having found a good
    # configuration in a discrete space, proposes it again and again (optuna#2021), and each repeat would spend a
    # whole trial for a result the study already has (trials are seeded). The repeat is recorded in Optuna as PRUNED
    # (user attribute `duplicate_of`), which also counts it against that configuration in TPE's model, and the
    # sampler is asked again, at most `max_repeats` times; then the repeat runs. Enqueued points (--warm-start,
    # `balance`) are run as given.
    max_repeats = 20

    def suggest(self, trial_id: str):
        from ptplus_tune.service import budget

        if not budget.allows_new_trial():
            return None  # the time left is shorter than a trial takes; BudgetWatch ends the study
        for _ in range(self.max_repeats):
            config = super().suggest(trial_id)
            ot_trial = self._ot_trials[trial_id]
            earlier = self._same_configuration(ot_trial)
            if earlier is None:
                return config
            ot_trial.set_user_attr("duplicate_of", earlier)
            self._ot_study.tell(ot_trial, state=optuna.trial.TrialState.PRUNED)
            del self._ot_trials[trial_id]
        if self.max_repeats:
            log.info("the sampler proposed only configurations already run (%d times); running a repeat",
                     self.max_repeats)
        return super().suggest(trial_id)

    def _same_configuration(self, ot_trial) -> int | None:
        """The number of the first earlier trial that ran (or runs) exactly these parameters, unless this trial is an
        enqueued point."""
        from optuna.trial import TrialState

        trials = self._ot_study.get_trials(deepcopy=False)
        if "fixed_params" in trials[ot_trial.number].system_attrs:
            return None
        for t in trials:
            if (t.number != ot_trial.number and t.state in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING)
                    and "duplicate_of" not in t.user_attrs and t.params == ot_trial.params):
                return t.number
        return None

    def restore(self, checkpoint_path: str) -> None:
        super().restore(checkpoint_path)
        close_stale_trials(self._ot_study, {t.number for t in self._ot_trials.values()})

    # After a killed driver, Tune's saved experiment can be older than the Optuna study: a trial Optuna already has
    # the outcome of is run on, and its reports would raise UpdateFinishedTrialError and end the whole study.
    # (OptunaSearch.on_trial_complete already tolerates this.)
    def on_trial_result(self, trial_id: str, result: dict) -> None:
        import optuna

        try:
            super().on_trial_result(trial_id, result)
        except optuna.exceptions.UpdateFinishedTrialError:
            log.info("trial %s: its Optuna trial already has its outcome; this report is not recorded again", trial_id)


def close_stale_trials(study, known: set[int]) -> list[int]:
    from optuna.trial import TrialState

    stale = [t.number for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)) if t.number not in known]
    for number in stale:
        study.tell(number, state=TrialState.FAIL)
    if stale:
        log.info("closed %d Optuna trial(s) a killed driver left running: %s", len(stale), stale)
    return stale
