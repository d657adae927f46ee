from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import REPO, write_conf
from viva_pipelines.config import ConfigError, load_settings


def config_error(load, *args) -> str:
    with pytest.raises(ConfigError) as err:
        load(*args)
    return str(err.value)


def test_base_is_the_embedded_local_profile(make_settings, project: Path):
    settings = make_settings()
    assert settings.env == "base"
    assert settings.storage.root == str(project / "data")
    assert settings.sources.raw_videos.uri == str(project / "data" / "source_videos")
    assert settings.mlflow_tracking_uri == f"sqlite:///{project}/data/mlflow.db"
    assert settings.mlflow_artifact_location == (project / "data" / "mlflow").as_uri()
    assert settings.ingest.width % 2 == 0 and settings.ingest.max_frames % 4 == 1


def test_the_repository_conf_loads_in_every_environment():
    assert load_settings(REPO / "conf", include_local=False).storage.root.endswith("data")
    prod = load_settings(REPO / "conf", "prod", include_local=False)
    assert prod.storage.root.startswith("s3://")
    assert prod.mlflow_tracking_uri.startswith("http")
    gpu = prod.execution.asset_tags["sft_checkpoint"]["dagster-k8s/config"]
    assert gpu["container_config"]["resources"]["limits"]["nvidia.com/gpu"] == "8"


def test_env_overlay_wins_key_by_key_and_reads_env_vars(make_settings, monkeypatch):
    monkeypatch.setenv("VIVA_BUCKET", "team-videos")
    prod = make_settings("prod")
    assert prod.storage.root == "s3://team-videos/prod"
    assert prod.sources.raw_videos.uri == "s3://team-videos/incoming/videos"
    assert prod.ingest.shard_size == 64
    # keys that prod does not set keep their base value
    assert prod.ingest.crf == make_settings().ingest.crf


def test_unknown_key_names_file_and_key(project: Path, make_settings):
    write_conf(project, "staging", "ingest.yaml", {"ingest": {"shard_sise": 3}})
    with pytest.raises(ConfigError) as err:
        make_settings("staging")
    assert "conf/staging/ingest.yaml: ingest.shard_sise: unknown key" in str(err.value)


def test_wrong_type_names_file_key_and_value(project: Path, make_settings):
    write_conf(project, "staging", "x.yaml", {"ingest": {"fps": "fast", "width": 127}})
    message = config_error(make_settings, "staging")
    assert "conf/staging/x.yaml: ingest.fps" in message and "'fast'" in message
    assert "conf/staging/x.yaml: ingest.width" in message and "even" in message


def test_infinity_and_not_a_number_are_refused_where_a_bound_would_let_them_by(
    project: Path, make_settings
):
    """YAML's `.inf` passes a lower bound (`guidance_scale >= 1`) and `.nan` fails every bound
    with an unhelpful comparison; both are named as not finite."""
    write_conf(
        project,
        "staging",
        "x.yaml",
        {"inference": {"guidance_scale": float("inf")}, "ingest": {"fps": float("nan")}},
    )
    message = config_error(make_settings, "staging")
    assert "conf/staging/x.yaml: inference.guidance_scale" in message
    assert "conf/staging/x.yaml: ingest.fps" in message
    assert message.count("finite number") == 2


def test_missing_required_value_is_named(project: Path):
    (project / "conf" / "base" / "storage.yaml").write_text("mlflow: {experiment: x}\n")
    message = config_error(load_settings, project / "conf")
    assert "storage: required value is missing" in message
    assert "conf/base/" in message


def test_null_for_a_required_value_names_the_file(project: Path, make_settings):
    write_conf(project, "staging", "s.yaml", {"storage": {"root": None}})
    message = config_error(make_settings, "staging")
    assert "conf/staging/s.yaml: storage.root" in message


def test_unknown_environment_lists_the_available_ones(make_settings):
    message = config_error(make_settings, "qa")
    assert "'qa'" in message and "base" in message and "prod" in message


def test_a_profile_extends_another_key_by_key(project: Path, make_settings):
    write_conf(project, "staging", "ingest.yaml", {"ingest": {"shard_size": 5, "fps": 12}})
    write_conf(project, "canary", "profile.yaml", {"extends": "staging", "ingest": {"fps": 6}})
    canary = make_settings("canary")
    assert (canary.env, canary.ingest.shard_size, canary.ingest.fps) == ("canary", 5, 6)
    assert canary.ingest.crf == make_settings().ingest.crf  # neither sets it: base's


def test_a_profile_extending_in_a_cycle_or_an_unknown_profile_is_named(
    project: Path, make_settings
):
    write_conf(project, "a", "profile.yaml", {"extends": "b"})
    write_conf(project, "b", "profile.yaml", {"extends": "c"})
    write_conf(project, "c", "profile.yaml", {"extends": "a"})
    assert "profiles extend in a cycle: a -> b -> c -> a" in config_error(make_settings, "a")
    write_conf(project, "c", "profile.yaml", {"extends": "qa"})
    assert "environment 'qa' has no directory" in config_error(make_settings, "a")
    write_conf(project, "c", "profile.yaml", {"extends": "../base"})
    assert "conf/c/profile.yaml: extends must name a profile" in config_error(make_settings, "a")
    write_conf(project, "c", "other.yaml", {"extends": "base"})
    assert "extends: set in conf/c/other.yaml, conf/c/profile.yaml" in config_error(
        make_settings, "a"
    )


def test_invalid_yaml_names_file_and_line(project: Path, make_settings):
    (project / "conf" / "base" / "broken.yaml").write_text("ingest:\n  fps: [8\n")
    message = config_error(make_settings)
    assert "conf/base/broken.yaml" in message and "line" in message


def test_a_section_written_twice_in_one_file_is_refused_not_half_dropped(
    project: Path, make_settings
):
    """PyYAML keeps a duplicated key's last value: `inference.crf: 30` written above a second
    `inference:` block was silently lost."""
    (project / "conf" / "base" / "twice.yaml").write_text(
        "inference:\n  crf: 30\ningest:\n  fps: 8\ninference:\n  seed: 3\n"
    )
    message = config_error(make_settings)
    assert "conf/base/twice.yaml: line 5: not valid YAML (key 'inference' given twice" in message
    assert "(lines 1 and 5)" in message


def test_same_key_in_two_files_of_one_layer_is_refused(project: Path, make_settings):
    write_conf(project, "base", "zz.yaml", {"storage": {"root": "elsewhere"}})
    message = config_error(make_settings)
    assert "storage.root" in message and "conf/base/storage.yaml" in message


def test_local_overlay_is_personal_and_optional(project: Path):
    write_conf(project, "local", "me.yaml", {"ingest": {"shard_size": 3}})
    assert load_settings(project / "conf").ingest.shard_size == 3
    assert load_settings(project / "conf", include_local=False).ingest.shard_size == 8


def test_missing_env_var_without_default_is_named(project: Path, make_settings, monkeypatch):
    monkeypatch.delenv("NOT_SET_ANYWHERE", raising=False)
    write_conf(project, "staging", "s.yaml", {"storage": {"root": "${oc.env:NOT_SET_ANYWHERE}"}})
    message = config_error(make_settings, "staging")
    assert "conf/staging/s.yaml: storage.root" in message and "NOT_SET_ANYWHERE" in message


def test_object_store_root_requires_an_mlflow_server(make_settings):
    with pytest.raises(ConfigError, match=r"mlflow\.tracking_uri is required"):
        make_settings(**{"storage.root": "s3://bucket/prefix"})
    settings = make_settings(**{"storage.root": "s3://b/p", "mlflow.tracking_uri": "http://m:5000"})
    assert settings.mlflow_artifact_location == "s3://b/p/mlflow"


def test_settings_entry_point_reads_viva_env(project: Path, monkeypatch):
    from viva_pipelines import settings as entry

    monkeypatch.setenv("VIVA_CONF_DIR", str(project / "conf"))
    monkeypatch.setenv("VIVA_ENV", "prod")
    entry.get_settings.cache_clear()
    try:
        assert entry.get_settings().env == "prod"
    finally:
        entry.get_settings.cache_clear()
