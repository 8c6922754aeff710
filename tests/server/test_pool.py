"""The clone pool's server side (--pool, --pool-idle-timeout, FCWARM_POOL, GET /v1/pool, fcwarm_pool_* metrics)
with --backend none: no VM starts, so these check configuration, validation and what is reported. Takes,
refills and drains against real VMs are in tests/vm/warm_boot_test.cpp ("pool: ...")."""

import os

import pytest

from conftest import Server, create_image


def _refused(*args, env=None):
    old = dict(os.environ)
    if env:
        os.environ.update(env)
    try:
        s = Server(*args, expect_start=False)
    finally:
        os.environ.clear()
        os.environ.update(old)
    try:
        assert s.wait_exit(15) == 2
        return s.read_log()
    finally:
        s.close()


@pytest.mark.parametrize("entry,words", [
    ("docker", "is not IMAGE=N"),
    ("=2", "is not IMAGE=N"),
    ("docker=x", "is not IMAGE=N"),
    ("docker=-1", "is not IMAGE=N"),
    ("docker=17", "between 0 and 16"),
    ("Bad Name=1", "neither a runtime image id nor a valid image name"),
])
def test_bad_pool_entries_are_refused_naming_the_flag(entry, words):
    log = _refused("--pool", entry)
    assert "--pool" in log and words in log, log


def test_a_pool_of_an_unregistered_image_is_refused():
    log = _refused("--pool", "nosuch=1")
    assert "--pool: no runtime image 'nosuch' is registered" in log, log


def test_fcwarm_pool_environment_variable_is_read():
    log = _refused(env={"FCWARM_POOL": "nosuch=2"})
    assert "--pool: no runtime image 'nosuch' is registered" in log, log


def test_pool_status_and_metrics(start_server):
    first = start_server()
    img = create_image(first, "pooled")
    other = create_image(first, "unpooled")
    assert first.stop() == 0
    s = start_server("--pool", "pooled=2", "--pool", other["id"] + "=0", "--pool-idle-timeout", "60",
                     data_dir=first.data_dir)
    st, _, doc = s.get("/v1/pool")
    assert st == 200, doc
    items = {i["image"]: i for i in doc["items"]}
    assert set(items) == {"pooled", other["id"]}
    p = items["pooled"]
    assert p["runtime_image_id"] == img["id"]
    assert p["size"] == 2
    assert p["ready"] == 0 and p["clones"] == []  # no snapshot can be built without a hypervisor
    assert p["taken"] == 0 and p["misses"] == 0 and p["pss_bytes"] == 0
    assert items[other["id"]]["size"] == 0
    st, _, text = s.get("/metrics")
    assert st == 200
    assert 'fcwarm_pool_size{image="pooled"} 2' in text
    assert 'fcwarm_pool_ready{image="pooled"} 0' in text
    assert 'fcwarm_pool_taken_total{image="pooled"} 0' in text
    assert 'fcwarm_pool_discarded_total{reason="rebuilt"} 0' in text
    assert 'fcwarm_vms{state="pooled"} 0' in text


def test_no_pool_no_pool_metrics(start_server):
    s = start_server()
    st, _, doc = s.get("/v1/pool")
    assert st == 200 and doc["items"] == []
    st, _, text = s.get("/metrics")
    assert "fcwarm_pool_size" not in text
