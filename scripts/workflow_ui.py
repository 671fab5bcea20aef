"""Convert ComfyUI workflows between the UI format (what the front end saves) and the API format.

The UI format stores widget values as a positional list per node; which value belongs to which input is
decided by the node's input order in ``GET /object_info`` (required, then optional), with one extra
value after an INT that has "control after generate" (the seed's fixed/randomize switch). Values stay
in the list even when a widget is driven by a link. This module does that mapping both ways, so the
repository's UI workflows are generated from, and tested against, the API ones.

    python scripts/workflow_ui.py to-ui workflows/api/letstalk_basic_api.json OBJECT_INFO.json > letstalk_basic.json
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict

WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}
UI_ONLY = {"Note", "MarkdownNote"}  # front-end nodes that are not part of the prompt


def _input_specs(info: dict) -> list[tuple[str, list, bool]]:
    """(name, spec, optional) in the node's input order."""
    order = info.get("input_order") or {k: list(v) for k, v in info["input"].items()}
    specs = []
    for section in ("required", "optional"):
        for name in order.get(section, []):
            specs.append((name, info["input"][section][name], section == "optional"))
    return specs


def _is_widget(spec: list) -> bool:
    kind = spec[0]
    return isinstance(kind, list) or kind in WIDGET_TYPES


def _has_control_widget(name: str, spec: list) -> bool:
    options = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
    if "control_after_generate" in options:
        return bool(options["control_after_generate"])
    return spec[0] == "INT" and name in ("seed", "noise_seed")


def ui_to_api(ui: dict, object_info: dict) -> dict:
    """A UI-format workflow -> the API-format prompt that ``POST /prompt`` takes."""
    links = {link[0]: link for link in ui.get("links", [])}  # id -> [id, from, from_slot, to, to_slot, type]
    prompt = {}
    for node in ui["nodes"]:
        if node.get("mode", 0) in (2, 4):  # muted or bypassed
            continue
        node_type = node["type"]
        if node_type in UI_ONLY:  # notes for the reader: the front end's own, never sent to the server
            continue
        if node_type not in object_info:
            raise ValueError(f"node {node['id']}: type {node_type!r} is not registered in this ComfyUI")
        linked = {}
        for socket in node.get("inputs", []):
            if socket.get("link") is not None:
                _, source, slot, _, _, _ = links[socket["link"]]
                linked[socket["name"]] = [str(source), slot]
        values = list(node.get("widgets_values") or [])
        inputs = {}
        position = 0
        for name, spec, _optional in _input_specs(object_info[node_type]):
            if _is_widget(spec):
                if position < len(values):
                    inputs[name] = values[position]
                position += 1 + (1 if _has_control_widget(name, spec) else 0)
            if name in linked:
                inputs[name] = linked[name]
        prompt[str(node["id"])] = {"class_type": node_type, "inputs": inputs}
    return prompt


def api_to_ui(prompt: dict, object_info: dict, *, column_width: int = 380, row_height: int = 60) -> dict:
    """An API-format prompt -> a UI-format workflow with a left-to-right layout."""
    depth: dict[str, int] = {}

    def level(node_id: str) -> int:
        if node_id not in depth:
            sources = [v[0] for v in prompt[node_id]["inputs"].values() if isinstance(v, list)]
            depth[node_id] = 1 + max((level(s) for s in sources), default=-1)
        return depth[node_id]

    ids = sorted(prompt, key=int)
    for node_id in ids:
        level(node_id)
    links, outgoing = [], defaultdict(list)
    for node_id in ids:
        info = object_info[prompt[node_id]["class_type"]]
        for slot, (name, spec, _optional) in enumerate(
                [s for s in _input_specs(info) if not _is_widget(s[1]) or isinstance(prompt[node_id]["inputs"].get(s[0]), list)]):
            value = prompt[node_id]["inputs"].get(name)
            if isinstance(value, list):
                source, source_slot = value
                source_info = object_info[prompt[source]["class_type"]]
                link_id = len(links) + 1
                links.append([link_id, int(source), source_slot, int(node_id), slot, source_info["output"][source_slot]])
                outgoing[(source, source_slot)].append(link_id)

    link_by_target = {(l[3], l[4]): l[0] for l in links}
    nodes, rows = [], defaultdict(int)
    for order, node_id in enumerate(sorted(ids, key=lambda i: (depth[i], int(i)))):
        node = prompt[node_id]
        info = object_info[node["class_type"]]
        sockets, widgets_values = [], []
        socket_specs = [s for s in _input_specs(info) if not _is_widget(s[1]) or isinstance(node["inputs"].get(s[0]), list)]
        for slot, (name, spec, optional) in enumerate(socket_specs):
            kind = spec[0] if not isinstance(spec[0], list) else "COMBO"
            socket = {"name": name, "type": kind, "link": link_by_target.get((int(node_id), slot))}
            if optional:
                socket["shape"] = 7
            if _is_widget(spec):
                socket["widget"] = {"name": name}
            sockets.append(socket)
        for name, spec, _optional in _input_specs(info):
            if not _is_widget(spec):
                continue
            value = node["inputs"].get(name)
            if isinstance(value, list) or value is None:
                options = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
                value = options.get("default")
            widgets_values.append(value)
            if _has_control_widget(name, spec):
                widgets_values.append("fixed")
        if any(isinstance(s[1], list) and len(s[1]) > 1 and isinstance(s[1][1], dict)
               and (s[1][1].get("image_upload") or s[1][1].get("audio_upload")) for s in _input_specs(info)):
            widgets_values += ["image"] if info["input"]["required"].get("image") else [None, None]
        outputs = [{"name": out_name, "type": out_type, "slot_index": slot,
                    "links": outgoing.get((node_id, slot)) or None}
                   for slot, (out_type, out_name) in enumerate(zip(info["output"], info["output_name"]))]
        column = depth[node_id]
        y = rows[column]
        height = row_height + 26 * (len(sockets) + len(widgets_values))
        rows[column] += height + 40
        entry = {"id": int(node_id), "type": node["class_type"], "pos": [column * column_width, y],
                 "size": [column_width - 40, height], "flags": {}, "order": order, "mode": 0,
                 "inputs": sockets, "outputs": outputs,
                 "properties": {"Node name for S&R": node["class_type"]}, "widgets_values": widgets_values}
        if node.get("_meta", {}).get("title"):
            entry["title"] = node["_meta"]["title"]
        nodes.append(entry)
    return {"last_node_id": max(int(i) for i in ids), "last_link_id": len(links), "nodes": nodes,
            "links": links, "groups": [], "config": {}, "extra": {}, "version": 0.4}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("direction", choices=["to-ui", "to-api"])
    parser.add_argument("workflow")
    parser.add_argument("object_info", help="a saved GET /object_info answer")
    args = parser.parse_args(argv)
    with open(args.workflow) as handle:
        workflow = json.load(handle)
    with open(args.object_info) as handle:
        object_info = json.load(handle)
    result = api_to_ui(workflow, object_info) if args.direction == "to-ui" else ui_to_api(workflow, object_info)
    json.dump(result, sys.stdout, indent=1)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
