"""Plugin loading: isolation of broken plugins, duplicates, environment switches."""

import types
from importlib import metadata

import pytest

from illume_kit import hookimpl
from illume_kit.core import plugins
from illume_kit.core.plugins import PluginError, PluginManager
from illume_kit.core.registry import ComponentSpec, DuplicateComponent, UnknownComponent
from illume_kit.testing import registered


class FakeDist:
    def __init__(self, name, version):
        self.name, self.version = name, version


class FakeEP:
    group = "illume_kit"

    def __init__(self, name, dist, loader):
        self.name, self.dist, self._loader = name, FakeDist(dist, "1.2.3"), loader

    def load(self):
        return self._loader()


def _boom():
    raise ImportError("No module named 'torch_npu'")


def good_module():
    m = types.SimpleNamespace()

    @hookimpl
    def illume_kit_components():
        return [ComponentSpec("tokenizer", "goodtok", target="x:y", summary="ok")]

    m.illume_kit_components = illume_kit_components
    return m


@pytest.fixture()
def fake_eps(monkeypatch):
    eps = []

    def entry_points(group=None):
        return [e for e in eps if group in (None, e.group)]

    monkeypatch.setattr(metadata, "entry_points", entry_points)
    return eps


def test_broken_plugin_is_listed_and_the_rest_works(fake_eps):
    fake_eps += [FakeEP("broken", "illume-kit-broken", _boom), FakeEP("good", "illume-kit-good", good_module)]
    pm = PluginManager()
    reg = pm.build_registry()
    assert pm.infos["broken"].status == "failed"
    assert pm.infos["broken"].reason == "ImportError: No module named 'torch_npu'"
    assert reg.get("tokenizer", "goodtok").dist == "illume-kit-good"
    assert reg.get("tokenizer", "dualvitok").dist == "illume-kit"
    with pytest.raises(UnknownComponent, match=r"plugins that failed to load: broken \(illume-kit-broken 1.2.3\)"):
        reg.get("tokenizer", "brokentok")


def test_strict_mode_raises(fake_eps):
    fake_eps.append(FakeEP("broken", "illume-kit-broken", _boom))
    with pytest.raises(PluginError, match="plugin 'broken' from illume-kit-broken 1.2.3 failed: ImportError"):
        PluginManager(strict=True)


def test_hook_that_raises_is_isolated(fake_eps):
    m = types.SimpleNamespace()

    @hookimpl
    def illume_kit_components():
        raise RuntimeError("bad config")

    m.illume_kit_components = illume_kit_components
    fake_eps.append(FakeEP("raiser", "illume-kit-raiser", lambda: m))
    pm = PluginManager()
    reg = pm.build_registry()
    assert pm.infos["raiser"].status == "failed" and "bad config" in pm.infos["raiser"].reason
    assert reg.has("backbone", "qwen2")


def test_two_plugins_one_name_under_strict_names_both(fake_eps):
    fake_eps += [FakeEP("b", "dist-b", good_module), FakeEP("a", "dist-a", good_module)]
    with pytest.raises(DuplicateComponent, match=r"provided by two distributions: dist-a \(a\) and dist-b \(b\)"):
        PluginManager(strict=True).build_registry()


def two_component_module(name, other):
    m = types.SimpleNamespace()

    @hookimpl
    def illume_kit_components():
        return [
            ComponentSpec("tokenizer", name, target=f"{other}:Tok", summary=other),
            ComponentSpec("metric", f"{other}-metric", target=f"{other}:Metric"),
        ]

    m.illume_kit_components = illume_kit_components
    return m


@pytest.mark.parametrize("order", [("a", "b"), ("b", "a")])
def test_a_clash_withdraws_the_later_providers_component_only(fake_eps, order):
    mods = {"a": lambda: two_component_module("sharedtok", "a"), "b": lambda: two_component_module("sharedtok", "b")}
    fake_eps += [FakeEP(k, f"dist-{k}", mods[k]) for k in order]  # discovery order does not matter
    pm = PluginManager()
    reg = pm.build_registry()
    assert reg.get("tokenizer", "sharedtok").dist == "dist-a" and reg.get("tokenizer", "sharedtok").summary == "a"
    assert reg.has("metric", "a-metric") and reg.has("metric", "b-metric")  # b's other component still works
    assert pm.infos["a"].status == "ok" and pm.infos["b"].status == "conflict"
    assert pm.infos["b"].components == ["metric:b-metric"]
    assert "tokenizer 'sharedtok' withdrawn: also provided by dist-a (a)" in pm.infos["b"].reason
    assert reg.conflicts == [f"b (dist-b 1.2.3): {pm.infos['b'].reason}"] and not reg.failed


def test_builtins_win_a_clash_with_a_third_party(fake_eps):
    m = types.SimpleNamespace()

    @hookimpl
    def illume_kit_components():
        return [ComponentSpec("backbone", "own", target="x:y", aliases=("qwen2",))]

    m.illume_kit_components = illume_kit_components
    fake_eps += [FakeEP("aaa", "aaa-first-by-name", lambda: m), _builtin_ep()]
    pm = PluginManager()
    reg = pm.build_registry()
    assert reg.get("backbone", "qwen2").dist == "illume-kit" and not reg.has("backbone", "own")
    assert pm.infos["aaa"].status == "conflict" and pm.infos["aaa"].components == []
    assert "backbone 'qwen2' withdrawn: also provided by illume-kit (builtin)" in pm.infos["aaa"].reason
    assert "built-in components take precedence" in pm.infos["aaa"].reason


def test_one_entry_point_name_from_two_distributions(fake_eps):
    fake_eps += [FakeEP("same", "dist-z", _boom), FakeEP("same", "dist-m", good_module)]
    pm = PluginManager()
    assert pm.infos["same"].dist == "dist-m" and pm.infos["same"].status == "ok"
    clash = pm.infos["same (dist-z)"]
    assert clash.status == "conflict" and "plugin name 'same' is taken by dist-m 1.2.3" in clash.reason
    assert pm.build_registry().has("tokenizer", "goodtok")
    with pytest.raises(PluginError, match="declared by two distributions: dist-m 1.2.3 and dist-z 1.2.3"):
        PluginManager(strict=True)


def test_a_conflict_clears_when_the_winner_goes():
    with registered(two_component_module("sharedtok", "x"), name="x", dist="dist-x"):
        with registered(two_component_module("sharedtok", "y"), name="y", dist="dist-y") as reg:
            pm = plugins.get_manager()
            assert reg.get("tokenizer", "sharedtok").dist == "dist-x" and pm.infos["y"].status == "conflict"
            pm.unregister("x")
            reg = pm.build_registry()
            assert reg.get("tokenizer", "sharedtok").dist == "dist-y" and pm.infos["y"].status == "ok"
            assert pm.infos["y"].components == ["tokenizer:sharedtok", "metric:y-metric"]
            pm.register(two_component_module("sharedtok", "x"), plugins.PluginInfo("x", "dist-x", "0.0.1"))


def test_a_later_failing_hook_withdraws_the_components_of_the_earlier(fake_eps):
    m = types.SimpleNamespace()

    @hookimpl
    def illume_kit_components():
        return [ComponentSpec("tokenizer", "halfdone", target="x:y")]

    @hookimpl
    def illume_kit_recipes():
        raise OSError("recipes folder missing")

    m.illume_kit_components, m.illume_kit_recipes = illume_kit_components, illume_kit_recipes
    fake_eps.append(FakeEP("half", "illume-kit-half", lambda: m))
    pm = PluginManager()
    reg = pm.build_registry()
    assert pm.infos["half"].status == "failed" and "recipes folder missing" in pm.infos["half"].reason
    assert not reg.has("tokenizer", "halfdone") and pm.infos["half"].components == []
    assert reg.has("tokenizer", "dualvitok")


def test_a_bad_recipe_record_fails_the_plugin(fake_eps):
    m = good_module()

    @hookimpl
    def illume_kit_recipes():
        return ["/some/folder"]

    m.illume_kit_recipes = illume_kit_recipes
    fake_eps.append(FakeEP("badrec", "illume-kit-badrec", lambda: m))
    pm = PluginManager()
    reg = pm.build_registry()
    assert pm.infos["badrec"].status == "failed" and "must return RecipeSource records" in pm.infos["badrec"].reason
    assert not reg.has("tokenizer", "goodtok") and "/some/folder" not in [s.path for s in reg.recipe_sources]


def test_disable_and_allow_list(fake_eps, monkeypatch):
    fake_eps += [FakeEP("broken", "illume-kit-broken", _boom), FakeEP("good", "illume-kit-good", good_module)]
    monkeypatch.setenv("ILLUME_KIT_DISABLE_PLUGINS", "broken")
    pm = PluginManager()
    assert pm.infos["broken"].status == "disabled" and pm.build_registry().has("tokenizer", "goodtok")
    monkeypatch.delenv("ILLUME_KIT_DISABLE_PLUGINS")
    monkeypatch.setenv("ILLUME_KIT_LOAD_PLUGINS", "")
    reg = PluginManager().build_registry()
    assert not reg.has("tokenizer", "goodtok") and reg.has("tokenizer", "dualvitok")


def _builtin_ep():
    from illume_kit.plugins import builtin

    ep = FakeEP("builtin", "illume-kit", lambda: builtin)
    ep.dist.version = "0.1.0"
    return ep


def test_builtins_come_through_their_entry_point(fake_eps):
    fake_eps += [_builtin_ep(), FakeEP("good", "illume-kit-good", good_module)]
    pm = PluginManager()
    reg = pm.build_registry()
    assert pm.infos["builtin"].dist == "illume-kit" and "tokenizer:dualvitok" in pm.infos["builtin"].components
    assert reg.get("detokenizer", "vq").plugin == "builtin" and reg.has("tokenizer", "goodtok")


@pytest.mark.parametrize(
    "env", [("ILLUME_KIT_DISABLE_PLUGINS", "builtin,illume-kit,good"), ("ILLUME_KIT_LOAD_PLUGINS", "")]
)
def test_builtins_are_never_disabled(fake_eps, monkeypatch, env):
    fake_eps += [_builtin_ep(), FakeEP("good", "illume-kit-good", good_module)]
    monkeypatch.setenv(*env)
    pm = PluginManager()
    reg = pm.build_registry()
    assert pm.infos["good"].status == "disabled" and not reg.has("tokenizer", "goodtok")
    assert pm.infos["builtin"].status == "ok" and reg.has("tokenizer", "dualvitok") and reg.has("dataset", "shapes")


def test_builtins_without_entry_point_metadata(fake_eps):
    pm = PluginManager()  # no entry points at all, as in a checkout on PYTHONPATH
    assert pm.build_registry().has("backbone", "qwen2") and pm.infos["builtin"].status == "ok"
    assert PluginManager(entry_points=False).build_registry().has("detokenizer", "diffusion")


def test_in_test_registration_and_did_you_mean():
    with registered(good_module(), name="inline") as reg:
        assert reg.has("tokenizer", "goodtok")
        with pytest.raises(UnknownComponent, match="Did you mean goodtok"):
            reg.get("tokenizer", "goodtk")
    assert not plugins.get_registry().has("tokenizer", "goodtok")


def test_bad_hook_return_type_fails_that_plugin(fake_eps):
    m = types.SimpleNamespace()

    @hookimpl
    def illume_kit_components():
        return [{"role": "tokenizer", "name": "wrongtype", "target": "x:y"}]

    m.illume_kit_components = illume_kit_components
    fake_eps.append(FakeEP("wrong", "illume-kit-wrong", lambda: m))
    pm = PluginManager()
    reg = pm.build_registry()
    assert pm.infos["wrong"].status == "failed" and "must return ComponentSpec records" in pm.infos["wrong"].reason
    assert not reg.has("tokenizer", "wrongtype") and reg.has("tokenizer", "dualvitok")


def test_no_test_fake_is_a_registered_component():
    reg = PluginManager(entry_points=False).build_registry()
    targets = [s.target_str() for s in reg.specs()]
    assert len(targets) >= 20 and not [t for t in targets if "testing" in t or "fake" in t.lower()]


def test_a_plugin_with_an_undefined_hook_fails_with_the_hooks_named(fake_eps):
    m = types.SimpleNamespace()

    @hookimpl
    def illume_kit_tokenizers():
        return [ComponentSpec("tokenizer", "oldtok", target="x:y")]

    m.illume_kit_tokenizers = illume_kit_tokenizers
    fake_eps.append(FakeEP("old", "illume-kit-old", lambda: m))
    pm = PluginManager()
    assert pm.infos["old"].status == "failed" and not pm.build_registry().has("tokenizer", "oldtok")
    assert "implements illume_kit_tokenizers" in pm.infos["old"].reason
    assert "illume_kit_components, illume_kit_recipes" in pm.infos["old"].reason
