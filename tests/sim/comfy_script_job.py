"""Run one API-format prompt through ComfyScript, in a process of its own (its runtime is global).

Usage: python comfy_script_job.py SERVER_URL PROMPT_JSON RESULT_JSON

Transpiles the prompt to a ComfyScript script with the server's own /object_info, loads the
runtime's node classes from the server, runs the script, prints `QUEUED <prompt_id>` once the
runtime knows its task, waits for the SaveImage node's result and writes {"prompt_id", "script",
"images": [the saved images' /view references], "sizes": [[w, h], ...]}.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any


def main(url: str, prompt_path: Path, result_path: Path) -> None:
    from comfy_script import runtime
    from comfy_script.transpile import WorkflowToScriptTranspiler

    prompt = json.loads(prompt_path.read_text("utf-8"))
    body = WorkflowToScriptTranspiler(prompt, api_endpoint=url).to_script(runtime=False)
    # run it in a workflow, as the runtime's scripts do, naming the SaveImage output to read its result
    lines = [f"    saved = {line}" if line.startswith("SaveImage(") else f"    {line}"
             for line in body.strip().splitlines()]
    script = "\n".join(["with Workflow() as workflow:", *lines]) + "\n"
    source = result_path.with_suffix(".py")
    source.write_text(script, "utf-8")  # the runtime reads a workflow's source from its file
    runtime.load(url, watch=True)
    from comfy_script.runtime import nodes

    namespace: dict[str, Any] = dict(vars(nodes))
    namespace["Workflow"] = runtime.Workflow
    exec(compile(script, str(source), "exec"), namespace)  # noqa: S102  the script we just transpiled
    task = namespace["workflow"].task
    sys.stdout.write(f"QUEUED {task.prompt_id}\n")  # one write: the runtime's threads print as well
    sys.stdout.flush()  # the test starts the server's queue now
    result = task.wait_result(namespace["saved"])
    pictures = result.wait()
    result_path.write_text(json.dumps({
        "prompt_id": task.prompt_id, "script": script, "images": result._output["images"],
        "sizes": [list(picture.size) for picture in pictures]}), "utf-8")


if __name__ == "__main__":
    main(sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3]))
