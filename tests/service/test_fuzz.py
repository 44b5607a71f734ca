"""The OpenAPI document is true: schemathesis fuzzes a live server from its own /openapi.json on SQLite
and PostgreSQL (no 5xx, only documented status codes, content types and bodies), and the document's
``POST /act`` examples work against the deployment. The long run (≥ 10,000 requests per database) is
benchmarks/fuzz.py.
"""

from __future__ import annotations

import httpx

from benchmarks.fuzz import fuzz
from service.settings import Settings
from tests.service.conftest import STATE_DIM, LiveServer, admin_headers, make_settings

# Generated requests per operation and generation mode (positive and negative): a few hundred requests
# in all, seconds per database; derandomized, so CI sends the same requests every run.
MAX_EXAMPLES = 25


def api_replica(settings: Settings) -> Settings:
    """Role ``api``: the retrains the fuzzer queues are never run."""
    return make_settings(settings.database_url, role="api")


def test_fuzzing_finds_no_server_error_and_no_undocumented_response(trained: Settings) -> None:
    with LiveServer(api_replica(trained)) as server:
        result = fuzz(server.url, admin_headers(), MAX_EXAMPLES)
    assert result["n_failures"] == 0, result["failures"][:3]
    operations = result["operations"]
    assert set(operations) >= {"POST /act", "POST /feedback", "GET /admin/jobs/{job_id}", "GET /readyz"}
    # Schema-valid /act requests are served: the document says the state's width.
    assert operations["POST /act"].get("200", 0) > 0
    assert operations["POST /act"].get("422", 0) > 0  # and the invalid ones are refused, documented
    assert not any(int(code) >= 500 for counts in operations.values() for code in counts)


def test_openapi_says_the_served_width_and_its_examples_work(trained: Settings) -> None:
    with LiveServer(api_replica(trained)) as server, httpx.Client(base_url=server.url) as client:
        document = client.get("/openapi.json").json()
        act = document["components"]["schemas"]["ActRequest"]
        assert act["properties"]["state"]["minItems"] == act["properties"]["state"]["maxItems"] == STATE_DIM
        for example in act["examples"]:
            assert len(example["state"]) == STATE_DIM
            assert client.post("/act", json=example).status_code == 200
        paths = document["paths"]
        assert {"400", "413", "422", "503"} <= set(paths["/act"]["post"]["responses"])
        assert {"404", "409", "422", "503"} <= set(paths["/feedback"]["post"]["responses"])
        assert "Retry-After" in paths["/act"]["post"]["responses"]["503"]["headers"]
        job = paths["/admin/jobs/{job_id}"]["get"]["responses"]
        assert {"401", "403", "404", "422", "503"} <= set(job)
        assert "503" in paths["/readyz"]["get"]["responses"]
        # Every documented error body is the one the handlers produce.
        unknown = client.get("/admin/jobs/999", headers=admin_headers())
        assert unknown.status_code == 404
        assert job["404"]["content"]["application/json"]["schema"] == {
            "$ref": "#/components/schemas/ErrorResponse"
        }
        assert set(unknown.json()["detail"][0]) <= {"loc", "field", "msg", "type"}
