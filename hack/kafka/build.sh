#!/usr/bin/env bash
# Resolves the Apache Kafka broker (KRaft mode; org.apache.kafka:kafka_2.13 and its runtime
# dependencies, Apache's own artifacts on Maven Central, pinned in hack/kafka/pom.xml) into a cache
# outside the repo, once, and prints the directory of its jars (the classpath is DIR/*). The dev
# kit (devkit/enumwatch_devkit/kafka.py) runs `java -cp DIR/* kafka.Kafka` from there. Idempotent,
# with a lock so that two test sessions resolving at once do not interleave.
#
#   bash hack/kafka/build.sh     # -> ~/.cache/enumwatch/kafka-<version>/libs
#
# Exit 3 when java or mvn is missing (the fixture then skips, or fails under
# ENUMWATCH_REQUIRE_INTEGRATION).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
version="$(sed -n 's:.*<kafka.version>\(.*\)</kafka.version>.*:\1:p' "$here/pom.xml")"
cache="${ENUMWATCH_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/enumwatch}"
prefix="$cache/kafka-$version"
libs="$prefix/libs"
if [[ -f "$libs/.complete" ]]; then
  echo "$libs"
  exit 0
fi
# shellcheck source=../need.sh
source "$here/../need.sh"
for tool in java mvn; do  # exit 3, not need_tool's 1: the fixture tells "missing" from "failed"
  command -v "$tool" >/dev/null || { echo "make ${MAKE_TARGET:-kafka}: needs $tool, which is not on PATH. $(how "$tool")" >&2; exit 3; }
done
mkdir -p "$cache"
exec 9>"$prefix.lock"
flock 9
if [[ ! -f "$libs/.complete" ]]; then
  echo "kafka: resolving kafka_2.13 $version and its dependencies from Maven Central (the first time takes a minute or two)..." >&2
  start=$SECONDS
  rm -rf "$libs.tmp"
  mvn -q -B -f "$here/pom.xml" dependency:copy-dependencies -DincludeScope=runtime \
    -DoutputDirectory="$libs.tmp" >&2
  touch "$libs.tmp/.complete"
  rm -rf "$libs" && mv "$libs.tmp" "$libs"
  echo "kafka: resolved $(ls "$libs" | wc -l) jars in $((SECONDS - start))s" >&2
fi
echo "$libs"
