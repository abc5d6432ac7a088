#!/usr/bin/env bash
# The test command: installs what the tests need from Debian's packages when missing
# (VictoriaMetrics, Mosquitto and its clients, Chromium and chromedriver, CJK fonts), builds the binaries the
# end-to-end tests start, and runs the whole test suite. `.ci/run` calls exactly this.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
command -v victoria-metrics >/dev/null 2>&1 || need+=(victoria-metrics)
command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ] || need+=(mosquitto)
# The README's first-site test and the MQTT access tests publish and subscribe as a user, a device
# or an attacker would, with mosquitto_pub and mosquitto_sub (and curl).
command -v mosquitto_pub >/dev/null 2>&1 || need+=(mosquitto-clients)
command -v curl >/dev/null 2>&1 || need+=(curl)
# The browser test: headless Chromium driven over WebDriver, and CJK fonts for its screenshots.
[ -x /usr/bin/chromium ] || need+=(chromium)
[ -x /usr/bin/chromedriver ] || need+=(chromium-driver)
dpkg -s fonts-noto-cjk >/dev/null 2>&1 || need+=(fonts-noto-cjk)
if [ ${#need[@]} -gt 0 ]; then
  echo "installing from Debian's packages: ${need[*]}"
  sudo_cmd=""
  [ "$(id -u)" -ne 0 ] && sudo_cmd="sudo"
  $sudo_cmd apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq --no-install-recommends "${need[@]}"
fi
# The Debian package enables a system mosquitto on port 1883; the tests start their own on
# free ports and never use it.

cargo fetch --locked
# The end-to-end tests start these binaries as real processes.
cargo build --locked --workspace --bins
# The demo is behind the `demo` feature (the simulator stays out of production binaries): build
# its library code too, so that it cannot break unnoticed. Libraries only, so the binaries the
# tests start stay the production ones; the whole workspace, so the dependencies are the ones
# already built above.
cargo build --locked --workspace --lib --features nh-gateway/demo
# Everything but the time-scaled end-to-end tests, two at a time on 2 cores.
cargo test --locked --workspace -- --test-threads "${NH_TEST_THREADS:-2}" --skip scenarios:: --skip alert_lifecycle:: --skip chaos:: --skip memory::
# The time-scaled ones (virtual clock x10..x360), the chaos runs (2,000 readings/s for minutes)
# and the memory run (1,000 readings/s for 180 s) apart from the rest, one test at a time: a busy
# machine must not make a silent device out of a stalled one. (The scenarios test runs its light
# scenarios two at a time itself: every window they rely on spans >= 10 s of real time.)
cargo test --locked -p nh-e2e --test e2e -- --test-threads 1 scenarios:: alert_lifecycle:: chaos:: memory::
