"""Cross-node reads on the HA bed: what one node writes, every other node reads exactly.

Each node's plugin has its own local KEK, so a node reading what another wrote must get
the other plugin's local KEK unwrapped by the shared remote key (Alibaba), or by the
same key file (local provider). Checked for KMS v2 (Secrets) and v1 (ConfigMaps on the
Alibaba bed; Secrets themselves on the local-provider bed), and right after each plugin
restarted with nothing in memory.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from ha_bed import HaBed, Node, read_values, running_bed, stored, write_objects

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]

PREFIXES = {"secrets": b"k8s:enc:kms:v2:kmsplug:", "configmaps": b"k8s:enc:kms:v1:kmsplug-v1:"}


def unwraps(node: Node) -> float:
    """Remote unwraps the node's plugin made so far (a KEK of another plugin, opened)."""
    metrics = node.plugin_metrics()
    return sum(
        value
        for name, value in metrics.items()
        if name.startswith("kmsplug_remote_calls_total{")
        and 'operation="unwrap"' in name
        and 'outcome="ok"' in name
    )


def test_what_one_node_writes_every_node_reads_exactly(ha: HaBed) -> None:
    written: dict[tuple[str, str], dict[str, str]] = {}
    for node in ha.nodes:
        for resource in ("secrets", "configmaps"):
            written[(node.name, resource)] = write_objects(node, resource, 4, f"x-{node.name}")
    key_id = ha.shared_kms.key_id()
    for (writer, resource), made in written.items():
        for name, value in made.items():
            prefix, stored_key_id = stored(ha, resource, name)
            assert prefix == PREFIXES[resource], (writer, name, prefix)
            assert value.encode() not in ha.raw(f"/registry/{resource}/default/{name}")
            if resource == "secrets":  # v1 stores no key_id
                assert stored_key_id == key_id
        for reader in ha.nodes:
            assert read_values(reader, resource, list(made)) == made, (writer, reader.name)


def test_reads_right_after_each_plugin_restarted(ha: HaBed) -> None:
    """A restarted plugin holds no KEK: the first v1 object another node writes makes it
    unwrap that node's local KEK through the KMS; everything reads back exactly."""
    before = {r: write_objects(ha.nodes[0], r, 3, "before") for r in ("secrets", "configmaps")}
    for restarted in ha.nodes:
        restarted.restart_plugin()
        unwraps_at_start = unwraps(restarted)
        others = [node for node in ha.nodes if node is not restarted]
        fresh = {
            r: {k: v for o in others for k, v in write_objects(o, r, 2, f"after-{o.name}").items()}
            for r in ("secrets", "configmaps")
        }
        for resource in ("secrets", "configmaps"):
            expected = {**before[resource], **fresh[resource]}
            assert read_values(restarted, resource, list(expected)) == expected, restarted.name
        # the v1 writes of the others were sealed under their own local KEKs: opened here
        # through the KMS, once per KEK (not once per object)
        opened = unwraps(restarted) - unwraps_at_start
        assert 1 <= opened <= len(others) + 1, (restarted.name, opened)


def test_a_node_restarted_whole_reads_everything_the_others_wrote(ha: HaBed) -> None:
    """Plugin and apiserver of one node restarted together: the apiserver fills its watch
    cache through a plugin that has to unwrap every other node's KEK first."""
    made = {
        (node.name, r): write_objects(node, r, 3, f"whole-{node.name}")
        for node in ha.nodes
        for r in ("secrets", "configmaps")
    }
    cold = ha.nodes[-1]
    cold.stop_apiserver()
    cold.restart_plugin()
    cold.start_apiserver()
    for (_, resource), objects in made.items():
        assert read_values(cold, resource, list(objects)) == objects
    assert cold.kms_healthy()


@pytest.fixture(scope="module")
def local_v1_bed() -> Iterator[HaBed]:
    """The local provider (one key file copied to each node), Secrets through KMS v1."""
    with running_bed(provider="local", v2_resources=(), v1_resources=("secrets",)) as bed:
        yield bed


def test_v1_secrets_with_the_local_provider_cross_nodes(local_v1_bed: HaBed) -> None:
    bed = local_v1_bed
    keys = {bed.shared_kms.node_key_file(node.workdir).read_bytes() for node in bed.nodes}
    assert len(keys) == 1  # the same key file on every node
    written = {
        node.name: write_objects(node, "secrets", 4, f"v1-{node.name}") for node in bed.nodes
    }
    for made in written.values():
        for name in made:
            prefix, _ = stored(bed, "secrets", name)
            assert prefix == b"k8s:enc:kms:v1:kmsplug-v1:"
        for reader in bed.nodes:
            assert read_values(reader, "secrets", list(made)) == made
    for restarted in bed.nodes:
        restarted.restart_plugin()
        others = [node for node in bed.nodes if node is not restarted]
        fresh = {k: v for o in others for k, v in write_objects(o, "secrets", 2, "r").items()}
        everything = {**fresh, **{k: v for made in written.values() for k, v in made.items()}}
        assert read_values(restarted, "secrets", list(everything)) == everything
