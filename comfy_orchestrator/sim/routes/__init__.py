"""The simulated server's HTTP routes, one class per group, one method per route, as ComfyUI 0.8 answers them.

base (what every group is handed), sockets (/ws), info (the server, its models and node classes),
jobs (prompts, queue, history, /api/jobs), files (upload and view), userdata (users, settings and
the user folder), internal (the frontend's /internal routes). sim.app puts them together.
"""
