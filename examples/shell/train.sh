#!/bin/sh
# A prefect-hpo trial for a program that cannot import Python: plain POSIX sh + awk.
#
# Parameters arrive on the command line, filled in from the spec's command template
#     trial: {command: sh examples/shell/train.sh {x} {y}}
# (they are also in $PREFECT_HPO_PARAMS as JSON, for programs that can parse it). Metrics go
# out as protocol lines on standard output, one per step; the last one is the final value:
#     PREFECT_HPO_REPORT {"step": 3, "metrics": {"loss": 0.42}}
#
# The toy objective imitates a training run: at step s the loss is
#     f(x, y) + 1/s,   f(x, y) = (x - 0.3)^2 + 2 (y + 0.2)^2 + 0.1 sin(5 x)
# so every run improves step by step and better (x, y) end lower. On [-1, 1]^2, f is smallest
# (0.0871) at x = 0.0619, y = -0.2, so the best final loss (step 5) is 0.2871.
#
# Run it standalone from the repository root:
#     sh examples/shell/train.sh 0.3 -0.2
set -eu

if [ "$#" -ne 2 ]; then
    echo "usage: $0 X Y   (two numbers)" >&2
    exit 2
fi

STEPS=${STEPS:-5}

awk -v x="$1" -v y="$2" -v steps="$STEPS" 'BEGIN {
    num = "^[-+]?([0-9]+[.]?[0-9]*|[.][0-9]+)([eE][-+]?[0-9]+)?$"
    if (x !~ num || y !~ num) { print "train.sh: X and Y must be numbers, got \"" x "\" \"" y "\"" > "/dev/stderr"; exit 2 }
    x += 0; y += 0
    f = (x - 0.3) ^ 2 + 2 * (y + 0.2) ^ 2 + 0.1 * sin(5 * x)
    printf "toy training: x=%s y=%s\n", x, y
    for (s = 1; s <= steps; s++) {
        printf "PREFECT_HPO_REPORT {\"step\": %d, \"metrics\": {\"loss\": %.8g}}\n", s, f + 1 / s
        fflush()
    }
}'
