"""docs/api.md is generated from the proto comments and must match them."""

from __future__ import annotations

import subprocess
import sys

from .conftest import ROOT


def test_api_reference_is_up_to_date():
    r = subprocess.run([sys.executable, str(ROOT / "scripts" / "gen_api_docs.py"), "--check"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr + r.stdout


def test_api_reference_covers_every_service_and_method():
    from google.protobuf import descriptor_pool

    import factpatch.v1  # noqa: F401  (registers the generated descriptors)

    text = (ROOT / "docs" / "api.md").read_text()
    pool = descriptor_pool.Default()
    for proto in sorted((ROOT / "proto" / "factpatch" / "v1").glob("*.proto")):
        f = pool.FindFileByName(f"factpatch/v1/{proto.name}")
        for service in f.services_by_name.values():
            assert f"### service {service.name}" in text
            for method in service.methods:
                assert f"#### {service.name}.{method.name}" in text


def test_generated_grpc_code_matches_the_protos():
    r = subprocess.run([sys.executable, str(ROOT / "scripts" / "gen_protos.py"), "--check"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr + r.stdout
