"""The routes ComfyUI 0.8 has beyond prompts and files: users, settings, userdata, i18n, /internal."""

from __future__ import annotations

import json
from typing import Any

import pytest
import requests

from comfy_orchestrator.sim import SimServer

TIMEOUT_S = 10.0
WORKFLOW = {"last_node_id": 2, "nodes": [{"id": 1, "type": "KSampler"}], "links": [], "version": 0.4}


@pytest.fixture
def server(sim: Any) -> SimServer:
    started: SimServer = sim(1)[0]
    return started


@pytest.mark.parametrize("prefix", ["", "/api"])
def test_a_workflow_round_trips_through_userdata(server: SimServer, prefix: str) -> None:
    base = f"{server.url}{prefix}/userdata"
    saved = requests.post(f"{base}/workflows%2Flighthouse.json", data=json.dumps(WORKFLOW), timeout=TIMEOUT_S)
    assert (saved.status_code, saved.json()) == (200, "workflows/lighthouse.json")
    assert json.loads((server.user_dir / "default" / "workflows" / "lighthouse.json").read_text()) == WORKFLOW
    assert requests.get(f"{base}/workflows%2Flighthouse.json", timeout=TIMEOUT_S).json() == WORKFLOW
    listed = requests.get(base, params={"dir": "workflows"}, timeout=TIMEOUT_S)
    assert listed.json() == ["lighthouse.json"]
    refused = requests.post(f"{base}/workflows%2Flighthouse.json", params={"overwrite": "false"}, data=b"{}",
                            timeout=TIMEOUT_S)
    assert (refused.status_code, refused.text) == (409, "File already exists")
    moved = requests.post(f"{base}/workflows%2Flighthouse.json/move/workflows%2Fharbour.json",
                          params={"full_info": "true"}, timeout=TIMEOUT_S).json()
    assert moved["path"] == "workflows/harbour.json" and moved["size"] == len(json.dumps(WORKFLOW))
    tree = requests.get(f"{server.url}{prefix}/v2/userdata", timeout=TIMEOUT_S).json()
    assert [(entry["path"], entry["type"]) for entry in tree] == [("workflows", "directory"),
                                                                   ("workflows/harbour.json", "file")]
    assert requests.delete(f"{base}/workflows%2Fharbour.json", timeout=TIMEOUT_S).status_code == 204
    assert requests.get(f"{base}/workflows%2Fharbour.json", timeout=TIMEOUT_S).status_code == 404


@pytest.mark.parametrize("name", ["..%2F..%2Fescaped.json", "%2E%2E%2Fescaped.json", "%252E%252E%252Fescaped.json",
                                  "%2Ftmp%2Fescaped.json"])
def test_userdata_paths_outside_the_user_folder_are_refused(server: SimServer, name: str) -> None:
    written = requests.post(f"{server.url}/userdata/{name}", data=b"{}", timeout=TIMEOUT_S)
    assert written.status_code == 403
    assert requests.get(f"{server.url}/userdata/{name}", timeout=TIMEOUT_S).status_code == 403
    assert requests.delete(f"{server.url}/userdata/{name}", timeout=TIMEOUT_S).status_code == 403
    assert not list(server.root.rglob("escaped.json"))


def test_userdata_listings_refuse_what_comfyui_refuses(server: SimServer) -> None:
    userdata = f"{server.url}/userdata"
    assert (requests.get(userdata, timeout=TIMEOUT_S).status_code,
            requests.get(userdata, timeout=TIMEOUT_S).text) == (400, "Directory not provided")
    assert requests.get(userdata, params={"dir": "../.."}, timeout=TIMEOUT_S).status_code == 403
    assert requests.get(userdata, params={"dir": "missing"}, timeout=TIMEOUT_S).status_code == 404
    assert requests.get(f"{server.url}/v2/userdata", params={"path": "../x"}, timeout=TIMEOUT_S).status_code == 400
    assert requests.get(f"{server.url}/v2/userdata", timeout=TIMEOUT_S).json() == []


def test_userdata_listing_options(server: SimServer) -> None:
    for name in ("a.json", "sub%2Fb.json"):
        requests.post(f"{server.url}/userdata/workflows%2F{name}", data=b"{}", timeout=TIMEOUT_S)
    listing = f"{server.url}/userdata"
    assert requests.get(listing, params={"dir": "workflows"}, timeout=TIMEOUT_S).json() == ["a.json"]
    both = requests.get(listing, params={"dir": "workflows", "recurse": "true", "split": "true"},
                        timeout=TIMEOUT_S).json()
    assert sorted(both) == [["a.json", "a.json"], ["sub/b.json", "sub", "b.json"]]
    full = requests.get(listing, params={"dir": "workflows", "full_info": "true"}, timeout=TIMEOUT_S).json()
    assert [(entry["path"], entry["size"]) for entry in full] == [("a.json", 2)]


def test_settings_and_users(server: SimServer) -> None:
    assert requests.get(f"{server.url}/settings", timeout=TIMEOUT_S).json() == {}
    assert requests.post(f"{server.url}/settings", json={"Comfy.Locale": "en"}, timeout=TIMEOUT_S).status_code == 200
    assert requests.post(f"{server.url}/api/settings/Comfy.Theme", json="dark", timeout=TIMEOUT_S).status_code == 200
    assert requests.get(f"{server.url}/settings", timeout=TIMEOUT_S).json() == {"Comfy.Locale": "en",
                                                                               "Comfy.Theme": "dark"}
    assert requests.get(f"{server.url}/settings/Comfy.Theme", timeout=TIMEOUT_S).json() == "dark"
    assert requests.get(f"{server.url}/settings/unknown", timeout=TIMEOUT_S).json() is None
    assert (server.user_dir / "default" / "comfy.settings.json").is_file()
    assert requests.get(f"{server.url}/users", timeout=TIMEOUT_S).json() == {"storage": "server", "migrated": True}
    user_id = requests.post(f"{server.url}/users", json={"username": "ada"}, timeout=TIMEOUT_S).json()
    assert user_id.startswith("ada_")
    duplicate = requests.post(f"{server.url}/users", json={"username": "ada"}, timeout=TIMEOUT_S)
    assert (duplicate.status_code, duplicate.json()) == (400, {"error": "Duplicate username."})
    system = requests.post(f"{server.url}/users", json={"username": "__system"}, timeout=TIMEOUT_S)
    assert system.json() == {"error": "System User prefix not allowed"}


@pytest.mark.parametrize(("path", "answer"), [("/i18n", {}), ("/workflow_templates", {}), ("/global_subgraphs", {}),
                                              ("/global_subgraphs/unknown", None)])
def test_frontend_catalogues_answer_empty(server: SimServer, path: str, answer: Any) -> None:
    for prefix in ("", "/api"):
        response = requests.get(f"{server.url}{prefix}{path}", timeout=TIMEOUT_S)
        assert (response.status_code, response.json()) == (200, answer)


def test_experiment_models(server: SimServer) -> None:
    folders = requests.get(f"{server.url}/api/experiment/models", timeout=TIMEOUT_S).json()
    names = [folder["name"] for folder in folders]
    assert "checkpoints" in names and "configs" not in names and "custom_nodes" not in names
    checkpoints = requests.get(f"{server.url}/experiment/models/checkpoints", timeout=TIMEOUT_S).json()
    assert [entry["name"] for entry in checkpoints] == sorted(server.checkpoints)
    assert {"pathIndex", "modified", "created", "size"} <= set(checkpoints[0])
    assert requests.get(f"{server.url}/experiment/models/nothing", timeout=TIMEOUT_S).status_code == 404


def test_internal_routes_exist_only_under_internal(server: SimServer) -> None:
    (server.output_dir / "old.png").write_bytes(b"x")
    (server.output_dir / ".hidden").write_bytes(b"x")
    assert requests.get(f"{server.url}/internal/files/output", timeout=TIMEOUT_S).json() == ["old.png"]
    bad = requests.get(f"{server.url}/internal/files/models", timeout=TIMEOUT_S)
    assert (bad.status_code, bad.json()) == (400, {"error": "Invalid directory type"})
    raw = requests.get(f"{server.url}/internal/logs/raw", timeout=TIMEOUT_S).json()
    assert raw["size"] == {"cols": 80, "rows": 24} and raw["entries"][0]["m"]
    assert isinstance(requests.get(f"{server.url}/internal/logs", timeout=TIMEOUT_S).json(), str)
    assert "checkpoints" in requests.get(f"{server.url}/internal/folder_paths", timeout=TIMEOUT_S).json()
    subscribed = requests.patch(f"{server.url}/internal/logs/subscribe", json={"clientId": "x", "enabled": True},
                                timeout=TIMEOUT_S)
    assert subscribed.status_code == 200
    assert requests.get(f"{server.url}/api/internal/logs", timeout=TIMEOUT_S).status_code == 404


def test_view_metadata_names_the_random_checkpoints_families_and_vaes_are_listed(server: SimServer) -> None:
    def metadata(name: str) -> requests.Response:
        return requests.get(f"{server.url}/view_metadata/checkpoints", params={"filename": name}, timeout=TIMEOUT_S)

    assert metadata("random-sdxl.safetensors").json()["modelspec.architecture"] == "stable-diffusion-xl-v1-base"
    assert metadata("random-sd15.safetensors").json()["modelspec.architecture"] == "stable-diffusion-v1"
    assert "modelspec.architecture" not in metadata("v1-5-pruned-emaonly.safetensors").json()
    assert metadata("absent.safetensors").status_code == 404
    assert requests.get(f"{server.url}/models/vae", timeout=TIMEOUT_S).json() == [
        "random-vae.safetensors", "sdxl_vae.safetensors"]
    vae_names = requests.get(f"{server.url}/object_info/VAELoader", timeout=TIMEOUT_S).json()
    assert vae_names["VAELoader"]["input"]["required"]["vae_name"][0] == [
        "random-vae.safetensors", "sdxl_vae.safetensors", "pixel_space"]


def test_a_server_without_metadata_for_a_checkpoint_answers_only_the_note(sim: Any) -> None:
    (bare,) = sim(checkpoints=("random-sdxl.safetensors",), checkpoint_metadata={}, vaes=())
    answer = requests.get(f"{bare.url}/view_metadata/checkpoints", params={"filename": "random-sdxl.safetensors"},
                          timeout=TIMEOUT_S).json()
    assert "modelspec.architecture" not in answer
    assert requests.get(f"{bare.url}/models/vae", timeout=TIMEOUT_S).json() == []
