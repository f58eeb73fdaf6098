"""Write the editor-format fixture files in this folder (run: python make_fixtures.py).

Each workflow below is spelled out by hand as the editor saves it: node inputs in the
definition's order (unlinked widget inputs left out, as the editor's save compresses them),
outputs with their link ids, widgets_values with the editor's extra values (the control value
after a seed, LoadImage's "upload" value), the links array, groups and the view state. Nothing
here reads the schema, so the converter is checked against these files, not against itself.
"""

from __future__ import annotations

import json
import zlib
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
CKPT = "random-sd15.safetensors"
POSITIVE = "a photograph of a lighthouse at dusk, detailed"
NEGATIVE = "blurry, low quality"

# class -> outputs (name, type), as the editor writes them
OUTPUTS: dict[str, list[tuple[str, str]]] = {
    "CheckpointLoaderSimple": [("MODEL", "MODEL"), ("CLIP", "CLIP"), ("VAE", "VAE")],
    "CLIPTextEncode": [("CONDITIONING", "CONDITIONING")],
    "LoadImage": [("IMAGE", "IMAGE"), ("MASK", "MASK")],
    "VAEEncode": [("LATENT", "LATENT")],
    "VAEEncodeTiled": [("LATENT", "LATENT")],
    "KSampler": [("LATENT", "LATENT")],
    "VAEDecode": [("IMAGE", "IMAGE")],
    "SaveImage": [],
    "PreviewImage": [],
    "EmptyLatentImage": [("LATENT", "LATENT")],
    "LatentUpscale": [("LATENT", "LATENT")],
    "LatentBlend": [("LATENT", "LATENT")],
    "RepeatLatentBatch": [("LATENT", "LATENT")],
    "ImageScale": [("IMAGE", "IMAGE")],
    "ImageInvert": [("IMAGE", "IMAGE")],
    "Note": [],
    "MarkdownNote": [],
}


class Workflow:
    """Builds one editor-format workflow; links are numbered in the order they are made."""

    def __init__(self, legacy: bool = False) -> None:
        self.nodes: dict[int, dict[str, Any]] = {}
        self.links: list[list[Any]] = []
        self.legacy = legacy

    def node(self, node_id: int, kind: str, widgets: list[Any] | None, *, inputs: list[tuple[Any, ...]] = (),
             outputs: list[tuple[str, str]] | None = None, title: str | None = None, mode: int = 0,
             properties: dict[str, Any] | None = None) -> None:
        """inputs: (name, type, source) or (name, type, source, "widget"); source (node, slot) or None."""
        slots = []
        for name, kind_, source, *widget in inputs:
            slot: dict[str, Any] = {"name": name, "type": kind_, "link": None}
            if not self.legacy:
                slot = {"localized_name": name, **slot}
            if widget:
                slot["widget"] = {"name": name}
            slot["_source"] = source
            slots.append(slot)
        node: dict[str, Any] = {
            "id": node_id,
            "type": kind,
            "pos": [100 + 320 * (len(self.nodes) % 4), 100 + 260 * (len(self.nodes) // 4)],
            "size": [315, 98 + 24 * len(widgets or [])],
            "flags": {},
            "order": len(self.nodes),
            "mode": mode,
            "inputs": slots,
            "outputs": [
                {**({} if self.legacy else {"localized_name": n}), "name": n, "type": t, "links": []}
                for n, t in (outputs if outputs is not None else OUTPUTS[kind])
            ],
            "properties": properties if properties is not None else {"Node name for S&R": kind},
        }
        if title is not None:
            node["title"] = title
        if widgets is not None:
            node["widgets_values"] = widgets
        self.nodes[node_id] = node

    def link_all(self) -> None:
        for node in self.nodes.values():
            for index, slot in enumerate(node["inputs"]):
                source = slot.pop("_source")
                if source is None:
                    continue
                origin, origin_slot = source
                link_id = len(self.links) + 1
                output = self.nodes[origin]["outputs"][origin_slot]
                output["links"].append(link_id)
                output["slot_index"] = origin_slot
                slot["link"] = link_id
                self.links.append([link_id, origin, origin_slot, node["id"], index, slot["type"]])
        for node in self.nodes.values():
            for output in node["outputs"]:
                if not output["links"]:
                    output["links"] = None if not self.legacy else []

    def dump(self, name: str, *, groups: list[dict[str, Any]] = (),
             definitions: list[dict[str, Any]] | None = None, extra_nodes: list[dict[str, Any]] = ()) -> None:
        self.link_all()
        data: dict[str, Any] = {}
        if not self.legacy:
            data["id"] = "5c0f3d8e-7a51-4f4e-9a0e-%012d" % zlib.crc32(name.encode())
            data["revision"] = 0
        data["last_node_id"] = max(self.nodes)
        data["last_link_id"] = len(self.links)
        data["nodes"] = list(self.nodes.values()) + list(extra_nodes)
        data["links"] = self.links
        data["groups"] = list(groups)
        if definitions is not None:
            data["definitions"] = {"subgraphs": definitions}
        data["config"] = {}
        data["extra"] = {"ds": {"scale": 0.8264462809917354, "offset": [152.5, 87.25]}}
        if not self.legacy:
            data["extra"]["frontendVersion"] = "1.28.8"
        data["version"] = 0.4
        (HERE / name).write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def group(title: str, bounding: list[float]) -> dict[str, Any]:
    return {"id": 1, "title": title, "bounding": bounding, "color": "#3f789e", "font_size": 24, "flags": {}}


def prompts(w: Workflow) -> None:
    w.node(1, "CheckpointLoaderSimple", [CKPT])
    w.node(2, "CLIPTextEncode", [POSITIVE], inputs=[("clip", "CLIP", (1, 1))], title="Positive Prompt")
    w.node(3, "CLIPTextEncode", [NEGATIVE], inputs=[("clip", "CLIP", (1, 1))], title="Negative Prompt")


def img2img_a() -> None:
    """(a): Reroute for the VAE, a Note, a group, a randomized seed."""
    w = Workflow()
    prompts(w)
    w.node(4, "LoadImage", ["ref_input_a.png", "image"], title="Input Image")
    w.node(5, "VAEEncode", None, inputs=[("pixels", "IMAGE", (4, 0)), ("vae", "VAE", (20, 0))])
    w.node(6, "KSampler", [1001, "randomize", 20, 8, "euler", "normal", 0.6], inputs=[
        ("model", "MODEL", (1, 0)), ("positive", "CONDITIONING", (2, 0)),
        ("negative", "CONDITIONING", (3, 0)), ("latent_image", "LATENT", (5, 0))])
    w.node(7, "VAEDecode", None, inputs=[("samples", "LATENT", (6, 0)), ("vae", "VAE", (20, 0))])
    w.node(8, "SaveImage", ["ref_a"], inputs=[("images", "IMAGE", (7, 0))])
    w.node(20, "Reroute", None, inputs=[("", "*", (1, 2))], outputs=[("", "VAE")],
           properties={"showOutputText": False, "horizontal": False})
    w.node(21, "Note", ["denoise 0.6: keeps the composition, changes the style"],
           properties={"text": ""})
    w.dump("img2img_a.json", groups=[group("Sampling", [560, 40, 700, 520])])


def hires_c() -> None:
    """(c): one PrimitiveNode drives both seeds; the model goes through two Reroutes."""
    w = Workflow()
    prompts(w)
    w.node(4, "EmptyLatentImage", [512, 512, 1])
    sampler_inputs = [("model", "MODEL", (22, 0)), ("seed", "INT", (30, 0), "widget"),
                      ("positive", "CONDITIONING", (2, 0)), ("negative", "CONDITIONING", (3, 0))]
    w.node(6, "KSampler", [3003, "fixed", 20, 8, "euler", "normal", 1],
           inputs=[*sampler_inputs, ("latent_image", "LATENT", (4, 0))], title="First Pass")
    w.node(7, "VAEDecode", None, inputs=[("samples", "LATENT", (10, 0)), ("vae", "VAE", (1, 2))])
    w.node(8, "SaveImage", ["ref_c_hires"], inputs=[("images", "IMAGE", (7, 0))])
    w.node(9, "LatentUpscale", ["nearest-exact", 1024, 1024, "disabled"],
           inputs=[("samples", "LATENT", (6, 0))])
    w.node(10, "KSampler", [3003, "fixed", 20, 8, "euler", "normal", 0.5],
           inputs=[*sampler_inputs, ("latent_image", "LATENT", (9, 0))], title="Second Pass")
    w.node(21, "Reroute", None, inputs=[("", "*", (1, 0))], outputs=[("", "MODEL")],
           properties={"showOutputText": False, "horizontal": False})
    w.node(22, "Reroute", None, inputs=[("", "*", (21, 0))], outputs=[("", "MODEL")],
           properties={"showOutputText": False, "horizontal": False})
    w.node(30, "PrimitiveNode", [3003, "fixed"], outputs=[("INT", "INT")], title="Seed",
           properties={"Run widget replace on values": False})
    w.node(31, "MarkdownNote", ["# Hires fix\nFirst pass at 512, second at 1024 with denoise 0.5."],
           properties={})
    w.nodes[30]["outputs"][0]["widget"] = {"name": "seed"}
    w.dump("hires_c.json", groups=[group("First pass", [40, 40, 900, 600]),
                                   group("Second pass", [980, 40, 900, 600])])


def blend_f() -> None:
    """(f): a bypassed ImageScale, a muted preview, a muted ImageInvert whose SaveImage must go."""
    w = Workflow()
    prompts(w)
    w.node(4, "LoadImage", ["ref_input_a.png", "image"])
    w.node(5, "VAEEncode", None, inputs=[("pixels", "IMAGE", (4, 0)), ("vae", "VAE", (1, 2))])
    w.node(6, "KSampler", [6006, "fixed", 20, 8, "euler", "normal", 0.6], inputs=[
        ("model", "MODEL", (1, 0)), ("positive", "CONDITIONING", (2, 0)),
        ("negative", "CONDITIONING", (3, 0)), ("latent_image", "LATENT", (13, 0))])
    w.node(7, "VAEDecode", None, inputs=[("samples", "LATENT", (6, 0)), ("vae", "VAE", (1, 2))])
    w.node(8, "SaveImage", ["ref_f_blend"], inputs=[("images", "IMAGE", (7, 0))])
    w.node(11, "LoadImage", ["ref_input_b.png", "image"], title="Second Image")
    w.node(12, "VAEEncode", None, inputs=[("pixels", "IMAGE", (14, 0)), ("vae", "VAE", (1, 2))])
    w.node(13, "LatentBlend", [0.5], inputs=[("samples1", "LATENT", (5, 0)), ("samples2", "LATENT", (12, 0))])
    w.node(14, "ImageScale", ["lanczos", 512, 512, "disabled"], inputs=[("image", "IMAGE", (11, 0))], mode=4)
    w.node(15, "PreviewImage", None, inputs=[("images", "IMAGE", (7, 0))], mode=2)
    w.node(16, "ImageInvert", None, inputs=[("image", "IMAGE", (4, 0))], mode=2)
    w.node(17, "SaveImage", ["inverted"], inputs=[("images", "IMAGE", (16, 0))])
    w.dump("blend_f.json")


def variations_d_legacy() -> None:
    """(d) as an older editor saved it: converted widget inputs appended, no localized names."""
    w = Workflow(legacy=True)
    prompts(w)
    w.node(4, "LoadImage", ["ref_input_a.png", "image"])
    w.node(5, "VAEEncode", None, inputs=[("pixels", "IMAGE", (4, 0)), ("vae", "VAE", (1, 2))])
    w.node(6, "KSampler", [4004, "increment", 20, 8, "euler", "normal", 0.6], inputs=[
        ("model", "MODEL", (1, 0)), ("positive", "CONDITIONING", (2, 0)),
        ("negative", "CONDITIONING", (3, 0)), ("latent_image", "LATENT", (9, 0)),
        ("seed", "INT", (30, 0), "widget")])
    w.node(7, "VAEDecode", None, inputs=[("samples", "LATENT", (6, 0)), ("vae", "VAE", (1, 2))])
    w.node(8, "SaveImage", ["variations/ref_d"], inputs=[("images", "IMAGE", (7, 0))])
    w.node(9, "RepeatLatentBatch", [4], inputs=[("samples", "LATENT", (5, 0))])
    w.node(30, "PrimitiveNode", [4004, "increment"], outputs=[("INT", "INT")],
           properties={"Run widget replace on values": False})
    w.nodes[30]["outputs"][0]["widget"] = {"name": "seed"}
    w.nodes[6]["inputs"][4]["widget"]["config"] = [
        "INT", {"default": 0, "min": 0, "max": 18446744073709551615, "control_after_generate": True}]
    w.dump("variations_d_legacy.json")


SUBGRAPH_ID = "8e4ce0a2-4a8e-4f3c-9d55-6f7a1e2b3c4d"


def tiled_e_subgraph() -> None:
    """(e) with ImageScale + VAEEncodeTiled packed into a subgraph; tile_size promoted to it."""
    w = Workflow()
    prompts(w)
    w.node(4, "LoadImage", ["ref_input_e_4x3.png", "image"])
    w.node(6, "KSampler", [5005, "fixed", 20, 8, "euler", "normal", 0.6], inputs=[
        ("model", "MODEL", (1, 0)), ("positive", "CONDITIONING", (2, 0)),
        ("negative", "CONDITIONING", (3, 0)), ("latent_image", "LATENT", (40, 0))])
    w.node(7, "VAEDecode", None, inputs=[("samples", "LATENT", (6, 0)), ("vae", "VAE", (1, 2))])
    w.node(8, "SaveImage", ["ref_e_scaled"], inputs=[("images", "IMAGE", (7, 0))])
    w.node(40, SUBGRAPH_ID, [512], inputs=[("image", "IMAGE", (4, 0)), ("vae", "VAE", (1, 2))],
           outputs=[("LATENT", "LATENT")], properties={"proxyWidgets": []})
    inner_nodes = [
        {"id": 9, "type": "ImageScale", "pos": [420, 120], "size": [315, 130], "flags": {}, "order": 0,
         "mode": 0,
         "inputs": [{"localized_name": "image", "name": "image", "type": "IMAGE", "link": 101}],
         "outputs": [{"localized_name": "IMAGE", "name": "IMAGE", "type": "IMAGE", "links": [102]}],
         "properties": {"Node name for S&R": "ImageScale"},
         "widgets_values": ["lanczos", 0, 512, "disabled"]},
        {"id": 5, "type": "VAEEncodeTiled", "pos": [800, 120], "size": [315, 150], "flags": {}, "order": 1,
         "mode": 0,
         "inputs": [
             {"localized_name": "pixels", "name": "pixels", "type": "IMAGE", "link": 102},
             {"localized_name": "vae", "name": "vae", "type": "VAE", "link": 103},
             {"localized_name": "tile_size", "name": "tile_size", "type": "INT",
              "widget": {"name": "tile_size"}, "link": 104}],
         "outputs": [{"localized_name": "LATENT", "name": "LATENT", "type": "LATENT", "links": [105]}],
         "properties": {"Node name for S&R": "VAEEncodeTiled"},
         "widgets_values": [256, 64, 64, 8]},
    ]
    definition = {
        "id": SUBGRAPH_ID,
        "version": 1,
        "state": {"lastGroupId": 0, "lastNodeId": 9, "lastLinkId": 105, "lastRerouteId": 0},
        "revision": 0,
        "config": {},
        "name": "Scale and encode",
        "inputNode": {"id": -10, "bounding": [200, 160, 120, 100]},
        "outputNode": {"id": -20, "bounding": [1200, 160, 120, 60]},
        "inputs": [
            {"id": "0b6f0d1e-1111-4c1e-8a4b-5d2f0c1a9e01", "name": "image", "type": "IMAGE",
             "linkIds": [101], "localized_name": "image", "pos": [300, 180]},
            {"id": "0b6f0d1e-2222-4c1e-8a4b-5d2f0c1a9e02", "name": "vae", "type": "VAE",
             "linkIds": [103], "localized_name": "vae", "pos": [300, 200]},
            {"id": "0b6f0d1e-3333-4c1e-8a4b-5d2f0c1a9e03", "name": "tile_size", "type": "INT",
             "linkIds": [104], "localized_name": "tile_size", "pos": [300, 220]},
        ],
        "outputs": [
            {"id": "0b6f0d1e-4444-4c1e-8a4b-5d2f0c1a9e04", "name": "LATENT", "type": "LATENT",
             "linkIds": [105], "localized_name": "LATENT", "pos": [1220, 180]},
        ],
        "widgets": [],
        "nodes": inner_nodes,
        "groups": [],
        "links": [
            {"id": 101, "origin_id": -10, "origin_slot": 0, "target_id": 9, "target_slot": 0, "type": "IMAGE"},
            {"id": 102, "origin_id": 9, "origin_slot": 0, "target_id": 5, "target_slot": 0, "type": "IMAGE"},
            {"id": 103, "origin_id": -10, "origin_slot": 1, "target_id": 5, "target_slot": 1, "type": "VAE"},
            {"id": 104, "origin_id": -10, "origin_slot": 2, "target_id": 5, "target_slot": 2, "type": "INT"},
            {"id": 105, "origin_id": 5, "origin_slot": 0, "target_id": -20, "target_slot": 0, "type": "LATENT"},
        ],
        "extra": {},
    }
    w.dump("tiled_e_subgraph.json", definitions=[definition])


def bad_files() -> None:
    w = Workflow()
    prompts(w)
    w.node(4, "LoadImage", ["ref_input_a.png", "image"])
    w.node(8, "SaveImage", ["ref_a"], inputs=[("images", "IMAGE", (4, 0))])
    w.link_all()
    w.links[-1][1] = 99  # the link says it comes from node 99, which was deleted
    data = {"last_node_id": 8, "last_link_id": len(w.links), "nodes": list(w.nodes.values()),
            "links": w.links, "groups": [], "config": {}, "extra": {}, "version": 0.4}
    (HERE / "bad_link_to_missing_node.json").write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")

    w = Workflow()
    prompts(w)
    w.node(4, "EmptyLatentImage", [512, 512, 1])
    # a KSampler saved by an editor that knew no denoise and no control value: 5 values for 7
    w.node(6, "KSampler", [1001, 20, 8, "euler", "normal"], inputs=[
        ("model", "MODEL", (1, 0)), ("positive", "CONDITIONING", (2, 0)),
        ("negative", "CONDITIONING", (3, 0)), ("latent_image", "LATENT", (4, 0))])
    w.dump("bad_widget_count.json")

    (HERE / "bad_not_json.json").write_text('{"last_node_id": 8, "nodes": [{"id": 1, "type": "Check\n',
                                            encoding="utf-8")
    (HERE / "bad_neither_format.json").write_text(
        json.dumps({"name": "my workflow", "steps": 20, "sampler": "euler"}, indent=2) + "\n",
        encoding="utf-8")


if __name__ == "__main__":
    img2img_a()
    hires_c()
    blend_f()
    variations_d_legacy()
    tiled_e_subgraph()
    bad_files()
