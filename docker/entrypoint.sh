#!/usr/bin/env bash
# Start ComfyUI: one process, or several per GPU on consecutive ports.
# The same script is the Docker image's entrypoint and starts ComfyUI natively
# on a GPU machine; run it with --help for the options.
set -euo pipefail

usage() {
    cat <<'EOF'
Usage: entrypoint.sh [options] [-- extra ComfyUI flags]
       entrypoint.sh --check [options]

Start ComfyUI from a source folder. With several GPUs or several processes per
GPU, process i listens on PORT+i; each GPU's processes see only that GPU
(CUDA_VISIBLE_DEVICES) and each process gets its own output and temp folder.
The script stays in the foreground, and if one process ends it stops the rest.

Options (environment variable in brackets):
  --comfyui-dir DIR          ComfyUI source folder holding main.py [COMFYUI_DIR]
  --listen ADDR              address to listen on, default 127.0.0.1 [COMFYUI_LISTEN]
  --port PORT                first port, default 8188 [COMFYUI_PORT]
  --gpus LIST                GPU indices, e.g. 0,1; default: leave CUDA_VISIBLE_DEVICES alone [COMFYUI_GPUS]
  --processes-per-gpu N      ComfyUI processes per GPU, default 4 [COMFYUI_PROCESSES_PER_GPU]
  --output-dir DIR           output folder; with several processes, DIR/<port> each [COMFYUI_OUTPUT_DIR]
  --log-dir DIR              write each process's log to DIR/comfyui-<port>.log [COMFYUI_LOG_DIR]
  --python PATH              Python interpreter, default python3 [COMFYUI_PYTHON]
  --dry-run                  print the commands, start nothing
  --check                    exit 0 if every configured port answers /system_stats (health check)
  -h, --help                 this text
Extra ComfyUI flags come from COMFYUI_ARGS (split on spaces) and from after "--".

Four processes per GPU by default: measured on an H100 (docs/benchmarks.md), one process
keeps the GPU under half busy at SD1.5 512x512 and 4-5 reach its ceiling.
OMP_NUM_THREADS defaults to 1: with the default (one thread per core) each ComfyUI
process burns about 5 cores and 4 processes saturate a 16-core host before the GPU.
Without the comfyui-frontend-package Python package, ComfyUI refuses to start
unless --front-end-root names a folder; the script then serves a one-page stub.
EOF
}

die() { echo "entrypoint.sh: $*" >&2; exit 2; }

comfyui_dir=${COMFYUI_DIR:-}
listen=${COMFYUI_LISTEN:-127.0.0.1}
port=${COMFYUI_PORT:-8188}
gpus=${COMFYUI_GPUS:-}
per_gpu=${COMFYUI_PROCESSES_PER_GPU:-4}
output_dir=${COMFYUI_OUTPUT_DIR:-}
log_dir=${COMFYUI_LOG_DIR:-}
python=${COMFYUI_PYTHON:-python3}
mode=start
extra_args=()
# shellcheck disable=SC2206  # COMFYUI_ARGS is a space-separated flag list by design
[[ -n "${COMFYUI_ARGS:-}" ]] && extra_args=(${COMFYUI_ARGS})

while [[ $# -gt 0 ]]; do
    case $1 in
        --comfyui-dir) comfyui_dir=${2:?--comfyui-dir needs a value}; shift 2 ;;
        --listen) listen=${2:?--listen needs a value}; shift 2 ;;
        --port) port=${2:?--port needs a value}; shift 2 ;;
        --gpus|--gpu) gpus=${2:?--gpus needs a value}; shift 2 ;;
        --processes-per-gpu) per_gpu=${2:?--processes-per-gpu needs a value}; shift 2 ;;
        --output-dir) output_dir=${2:?--output-dir needs a value}; shift 2 ;;
        --log-dir) log_dir=${2:?--log-dir needs a value}; shift 2 ;;
        --python) python=${2:?--python needs a value}; shift 2 ;;
        --dry-run) mode=dry-run; shift ;;
        --check) mode=check; shift ;;
        -h|--help) usage; exit 0 ;;
        --) shift; extra_args+=("$@"); break ;;
        *) die "unknown option $1 (see --help)" ;;
    esac
done

[[ $port =~ ^[0-9]+$ ]] || die "--port must be a number, not '$port'"
[[ $per_gpu =~ ^[1-9][0-9]*$ ]] || die "--processes-per-gpu must be a positive number, not '$per_gpu'"
[[ -z $gpus || $gpus =~ ^[0-9]+(,[0-9]+)*$ ]] || die "--gpus must be indices like 0 or 0,1, not '$gpus'"

# One entry per process: the GPU it sees ("" = unchanged) and its port.
IFS=, read -r -a gpu_list <<< "${gpus:-}"
[[ ${#gpu_list[@]} -eq 0 ]] && gpu_list=("")
process_gpus=()
process_ports=()
for gpu in "${gpu_list[@]}"; do
    for ((i = 0; i < per_gpu; i++)); do
        process_gpus+=("$gpu")
        process_ports+=($((port + ${#process_ports[@]})))
    done
done

if [[ $mode == check ]]; then
    host=$listen
    [[ $host == 0.0.0.0 || $host == :: ]] && host=127.0.0.1
    for p in "${process_ports[@]}"; do
        "$python" - "$host" "$p" <<'EOF' || exit 1
import sys, urllib.request
url = f"http://{sys.argv[1]}:{sys.argv[2]}/system_stats"
try:
    with urllib.request.urlopen(url, timeout=5) as response:
        sys.exit(0 if response.status == 200 else 1)
except OSError as exc:
    sys.exit(f"{url}: {exc}")
EOF
    done
    exit 0
fi

[[ -n $comfyui_dir ]] || die "no ComfyUI folder: give --comfyui-dir DIR or set COMFYUI_DIR"
[[ -f $comfyui_dir/main.py ]] || die "$comfyui_dir has no main.py; is it a ComfyUI folder?"
comfyui_dir=$(cd "$comfyui_dir" && pwd)
# The processes start inside the ComfyUI folder, so a relative interpreter path must be made absolute.
[[ $python == */* ]] && python=$(cd "$(dirname "$python")" && pwd)/$(basename "$python")

export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
export PYTHONUNBUFFERED=1

# ComfyUI exits at start without its frontend package unless --front-end-root is given.
has_front_end_root=0
for arg in "${extra_args[@]+"${extra_args[@]}"}"; do
    [[ $arg == --front-end-root* ]] && has_front_end_root=1
done
if [[ $has_front_end_root == 0 ]] && ! "$python" -c 'import comfyui_frontend_package' 2>/dev/null; then
    stub=${TMPDIR:-/tmp}/comfyui-frontend-stub
    extra_args+=(--front-end-root "$stub")
    if [[ $mode == start ]]; then
        mkdir -p "$stub"
        printf '<!doctype html><title>ComfyUI</title><p>ComfyUI API server (no frontend installed).</p>\n' > "$stub/index.html"
        echo "entrypoint.sh: comfyui-frontend-package not installed; serving a stub page from $stub" >&2
    fi
fi

# Set the array `command` to the command line of process number $1.
build_command() {
    local p=${process_ports[$1]}
    command=("$python" "$comfyui_dir/main.py" --listen "$listen" --port "$p")
    if [[ ${#process_ports[@]} -gt 1 ]]; then
        # Separate folders: ComfyUI empties its temp folder at start, and two
        # processes saving into one folder can pick the same file counter.
        command+=(--output-directory "${output_dir:-$comfyui_dir/output}/$p"
                  --temp-directory "${TMPDIR:-/tmp}/comfyui-$p")
    elif [[ -n $output_dir ]]; then
        command+=(--output-directory "$output_dir")
    fi
    command+=("${extra_args[@]+"${extra_args[@]}"}")
}

if [[ $mode == dry-run ]]; then
    for index in "${!process_ports[@]}"; do
        build_command "$index"
        gpu=${process_gpus[$index]}
        echo "${gpu:+CUDA_VISIBLE_DEVICES=$gpu }OMP_NUM_THREADS=$OMP_NUM_THREADS ${command[*]}"
    done
    exit 0
fi

cd "$comfyui_dir"
[[ -n $log_dir ]] && mkdir -p "$log_dir"

# One process and no log file: become ComfyUI, so it gets signals directly (PID 1 in Docker).
if [[ ${#process_ports[@]} -eq 1 && -z $log_dir ]]; then
    build_command 0
    [[ -n ${process_gpus[0]} ]] && export CUDA_VISIBLE_DEVICES=${process_gpus[0]}
    exec "${command[@]}"
fi

pids=()
stop_all() {
    local pid
    for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
}
trap 'stop_all; wait; exit 143' TERM INT

for index in "${!process_ports[@]}"; do
    build_command "$index"
    gpu=${process_gpus[$index]}
    log=/dev/stdout
    [[ -n $log_dir ]] && log=$log_dir/comfyui-${process_ports[$index]}.log
    if [[ -n $gpu ]]; then
        CUDA_VISIBLE_DEVICES=$gpu "${command[@]}" >> "$log" 2>&1 &
    else
        "${command[@]}" >> "$log" 2>&1 &
    fi
    pids+=($!)
    echo "entrypoint.sh: started ComfyUI pid $! on port ${process_ports[$index]}${gpu:+ (GPU $gpu)}" >&2
done

status=0
wait -n "${pids[@]}" || status=$?
echo "entrypoint.sh: a ComfyUI process ended (status $status); stopping the others" >&2
stop_all
wait || true
exit "$status"
