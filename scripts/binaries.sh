# Sourced by the benchmark scripts, after their options: sets `bin` to the folder holding
# account-server and account-server-load. With `binaries` set (--binaries DIR: a copy of an
# earlier build, to compare two builds in alternating runs) that folder is used as it is;
# otherwise both are built in configuration `build` first.
if [[ -n ${binaries:-} ]]; then
    bin=$(cd "$binaries" && pwd)
else
    swift build -c "$build" --product account-server >/dev/null
    swift build -c "$build" --product account-server-load >/dev/null
    bin=.build/$build
fi
