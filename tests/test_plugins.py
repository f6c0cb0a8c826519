"""Where entries and tasks come from: the entry-point groups (built-ins and installed packages alike) and
``--plugins`` for modules that are not installed (influence_bench/plugins.py)."""

import os
import subprocess
import sys
from importlib.metadata import EntryPoint, distribution

import pytest

from influence_bench import plugins
from influence_bench.api import resolve_entries, unavailable
from influence_bench.entries import BUILTIN_ORDER, ENTRIES, ORIGINS, EntryLoadError, get_entry, register
from influence_bench.entries.base import EigenEntry, Entry
from influence_bench.tasks import TASKS

SCALED_IDENTITY = '''
import torch

from influence_bench.curvature.eigen import EigenCurvature
from influence_bench.entries import EigenEntry, register


@register
class ScaledIdentity(EigenEntry):
    name = "scaled-identity-{suffix}"
    description = "mean GGN diagonal times I"

    def fit(self, problem):
        mean = problem.ggn_diagonal.mean()
        self.eigen_ = EigenCurvature.diagonal(mean * torch.ones(problem.n_params, dtype=torch.float64))
        return self
'''


@pytest.fixture
def clean_failures():
    """LOAD_FAILURES as it was: what a test records there, it removes."""
    saved = {group: dict(failures) for group, failures in plugins.LOAD_FAILURES.items()}
    yield plugins.LOAD_FAILURES
    for group, failures in plugins.LOAD_FAILURES.items():
        failures.clear()
        failures.update(saved[group])


def with_fake_entry_points(monkeypatch, extra):
    real = list(plugins.entry_points(group=plugins.ENTRY_GROUP))
    monkeypatch.setattr(plugins, "entry_points", lambda group: real + extra if group == plugins.ENTRY_GROUP
                        else list(distribution("influence_bench").entry_points.select(group=group)))


def test_built_ins_are_entry_points_in_the_chain_order():
    """One mechanism: every built-in entry and task is an entry point of this package's metadata."""
    declared = {ep.name: ep.value for ep in distribution("influence_bench").entry_points.select(group=plugins.ENTRY_GROUP)}
    assert sorted(declared) == sorted(BUILTIN_ORDER)
    assert [n for n in ENTRIES if n in declared] == list(BUILTIN_ORDER)
    for name, value in declared.items():
        module, _, attribute = value.partition(":")
        assert ENTRIES[name].__module__ == module and ENTRIES[name].__name__ == attribute
        assert ORIGINS[name] == f"{value} (entry point of influence_bench {distribution('influence_bench').version})"
    tasks = {ep.name for ep in distribution("influence_bench").entry_points.select(group=plugins.TASK_GROUP)}
    assert tasks == {"digits-mlp", "digits-mlp-cosine", "digits-logreg", "digits-cnn", "diabetes-mlp", "digits-mlp-noisy",
                     "wide-mlp"} and tasks <= set(TASKS)


def test_an_entry_point_that_fails_to_import_is_kept_with_its_traceback(monkeypatch, clean_failures):
    broken = EntryPoint("broken-entry", "no_such_module_anywhere.entry:Broken", plugins.ENTRY_GROUP)
    with_fake_entry_points(monkeypatch, [broken])
    plugins.load_group(plugins.ENTRY_GROUP, ENTRIES, lambda cls, origin: register(cls, origin=origin))
    why = plugins.entry_failures()["broken-entry"]
    assert "no_such_module_anywhere.entry:Broken" in why and "Traceback" in why and "ModuleNotFoundError" in why
    assert "broken-entry" not in ENTRIES and "kfac" in ENTRIES  # the others loaded
    with pytest.raises(EntryLoadError, match="ModuleNotFoundError"):
        get_entry("broken-entry")
    # a run keeps it as a name: a failure row with the traceback, never a crash
    assert resolve_entries(["identity", "broken-entry"], 1e-4, 1e-6) == ["identity", "broken-entry"]
    assert unavailable("broken-entry") == why and unavailable("identity") is None
    assert "broken-entry" in resolve_entries(None, 1e-4, 1e-6)  # and among the default entries


def test_an_entry_point_must_carry_its_entrys_name(monkeypatch, clean_failures):
    wrong = EntryPoint("not-kfac", "influence_bench.entries.kfac:KFAC", plugins.ENTRY_GROUP)
    with_fake_entry_points(monkeypatch, [wrong])
    plugins.load_group(plugins.ENTRY_GROUP, ENTRIES, lambda cls, origin: register(cls, origin=origin))
    assert "whose name is 'kfac'" in plugins.entry_failures()["not-kfac"]


def test_two_entry_points_of_one_name_are_an_error_naming_both(monkeypatch):
    twin = EntryPoint("kfac", "someone_else.entries:KFAC", plugins.ENTRY_GROUP)
    with_fake_entry_points(monkeypatch, [twin])
    with pytest.raises(plugins.DuplicateNameError) as raised:
        plugins.discover(plugins.ENTRY_GROUP)
    assert "influence_bench.entries.kfac:KFAC" in str(raised.value) and "someone_else.entries:KFAC" in str(raised.value)


def test_registering_a_second_entry_of_one_name_names_both_origins():
    class Impostor(Entry):
        name = "kfac"
        description = "not K-FAC"

    with pytest.raises(ValueError) as raised:
        register(Impostor, origin="impostor.py:Impostor")
    assert "influence_bench.entries.kfac:KFAC (entry point of influence_bench" in str(raised.value)
    assert "impostor.py:Impostor" in str(raised.value)


def test_plugins_from_the_current_directory_and_from_a_path(tmp_path, monkeypatch, clean_failures):
    (tmp_path / "here_entry.py").write_text(SCALED_IDENTITY.format(suffix="here"))
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "path_entry.py").write_text(SCALED_IDENTITY.format(suffix="path"))
    monkeypatch.chdir(tmp_path)
    located = plugins.load_plugins(["here_entry", "sub/path_entry.py"])
    assert located == [str(tmp_path / "here_entry.py"), str(tmp_path / "sub" / "path_entry.py")]
    assert {"scaled-identity-here", "scaled-identity-path"} <= set(ENTRIES)
    assert plugins.entry_failures() == {}
    with pytest.raises(plugins.PluginError, match="no_such_entry.py or no_such_entry/ in the current directory"):
        plugins.load_plugins(["no_such_entry"])


def test_a_plugin_module_that_raises_is_a_failure_row_not_a_crash(tmp_path, monkeypatch, clean_failures):
    (tmp_path / "raising_entry.py").write_text("raise ValueError('broken on purpose')\n")
    monkeypatch.chdir(tmp_path)
    plugins.load_plugins(["raising_entry"])
    why = plugins.entry_failures()["plugin:raising_entry"]
    assert "Traceback" in why and "ValueError: broken on purpose" in why
    # the names it may have provided are failure rows too, saying which plugin failed
    chosen = resolve_entries(["identity", "its-entry"], 1e-4, 1e-6)
    assert chosen == ["identity", "its-entry", "plugin:raising_entry"]
    assert "raising_entry failed to import" in unavailable("its-entry")


def test_list_shows_plugin_entries_with_their_origin(tmp_path):
    (tmp_path / "listed_entry.py").write_text(SCALED_IDENTITY.format(suffix="listed"))
    done = subprocess.run([sys.executable, "-m", "influence_bench", "list", "--json", "--plugins", "listed_entry"],
                          capture_output=True, text=True, timeout=120, cwd=tmp_path,
                          env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"})
    assert done.returncode == 0, done.stderr
    import json

    entries = {e["name"]: e for e in json.loads(done.stdout)["entries"]}
    assert entries["scaled-identity-listed"]["origin"] == "listed_entry:ScaledIdentity"
    assert entries["kfac"]["origin"] == "influence_bench"


def test_a_package_folder_is_a_plugin_and_a_taken_module_name_is_refused(tmp_path, monkeypatch, clean_failures):
    (tmp_path / "folder_entry").mkdir()
    (tmp_path / "folder_entry" / "__init__.py").write_text(SCALED_IDENTITY.format(suffix="folder"))
    (tmp_path / "json.py").write_text(SCALED_IDENTITY.format(suffix="json"))  # would shadow the standard json
    monkeypatch.chdir(tmp_path)
    located = plugins.load_plugins(["./folder_entry", "./json.py"])
    assert located[0] == f"{tmp_path}{os.pathsep}folder_entry" and "scaled-identity-folder" in ENTRIES
    why = plugins.entry_failures()["plugin:./json.py"]
    assert "a module of that name is already imported" in why and "rename the file" in why
    import json

    assert json.dumps([1]) == "[1]"  # the standard module is untouched


def test_check_names_the_plugin_that_failed_not_an_unknown_entry(tmp_path, monkeypatch, clean_failures):
    from influence_bench.submission import check_submission

    (tmp_path / "raising_entry.py").write_text("raise ValueError('broken on purpose')\n")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(EntryLoadError) as raised:
        check_submission("its-entry", plugins=["raising_entry.py"], run=False)
    assert "raising_entry.py failed to import" in str(raised.value) and "ValueError: broken on purpose" in str(raised.value)


class WithClosure(EigenEntry):
    """An entry with a parameter grid whose fitted state holds a closure, dropped in ``__getstate__`` and rebuilt in
    ``__setstate__`` (the pattern the kit recommends): also at a point of its grid (``Entry.at``), pickle must use them."""

    name = "test-with-closure"
    description = "a closure in its state"
    parameters = {"scale": (1.0, 2.0)}

    def fit(self, problem):
        import torch

        from influence_bench.curvature.eigen import EigenCurvature

        self.eigen_ = EigenCurvature.diagonal(self.params["scale"] * torch.ones(problem.n_params, dtype=torch.float64))
        self.rebuilt_ = False
        self.closure_ = lambda v: v
        return self

    def __getstate__(self):
        return {k: v for k, v in self.__dict__.items() if k != "closure_"}

    def __setstate__(self, state):
        self.__dict__.update(state, closure_=lambda v: v, rebuilt_=True)


def test_an_entry_at_a_point_pickles_through_its_own_state_methods(tiny_problem):
    import pickle

    import torch

    entry = WithClosure.at(scale=2.0)().fit(tiny_problem)
    clone = pickle.loads(pickle.dumps(entry))
    assert clone.rebuilt_ and clone.params == {"scale": 2.0} and clone.name == "test-with-closure[scale=2.0]"
    assert torch.equal(clone.scores(tiny_problem), entry.scores(tiny_problem))
