#!/usr/bin/env bash
# need TARGET TOOL...: exit 1 with one line per missing TOOL, naming it and how to get it, before
# the make target TARGET does anything else (docs/getting-started.md#prerequisites lists them).
# Sourced by the build scripts as well (need_tool TARGET TOOL), which check only when they must
# build: binaries already in ~/.cache/enumwatch need no Go.
how() {
  case "$1" in
    go) echo "Go >= 1.24 builds kube-apiserver, etcd and the test tools from their modules: install it from https://go.dev/dl/ (or apt-get install golang-go) and put it on PATH" ;;
    kubectl) echo "kubectl talks to the local apiserver: install it from https://kubernetes.io/docs/tasks/tools/ (or apt-get install kubernetes-client)" ;;
    java | mvn) echo "a JDK (>= 17) and Maven resolve and run the Apache Kafka broker of the Kafka / Event Hubs tests: apt-get install openjdk-17-jdk-headless maven" ;;
    curl) echo "curl is the tour's anonymous scanner: apt-get install curl (or your system's package)" ;;
    cc) echo "a C compiler builds the package's typed decoder (enumwatch.audit._typed, setup.py) when make venv installs it: apt-get install gcc (and python3.11-dev for a Debian python3.11; pyenv's and python.org's builds carry their headers)" ;;
    python3.11 | python3*) echo "Python >= 3.11 makes .venv/: apt-get install python3.11 python3.11-venv, or run make PYTHON=/path/to/python3.12" ;;
    *) echo "install it and put it on PATH" ;;
  esac
}
need_tool() {  # need_tool TARGET TOOL: 0 when TOOL is on PATH, else one line and exit 1
  command -v "$2" >/dev/null 2>&1 && return 0
  echo "make $1: needs $2, which is not on PATH. $(how "$2")" >&2
  exit 1
}
if [[ "${BASH_SOURCE[0]}" == "$0" ]]; then
  target="$1"; shift
  for tool in "$@"; do need_tool "$target" "$tool"; done
fi
