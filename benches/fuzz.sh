#!/usr/bin/env bash
# The property tests that judge untrusted input, run far longer than CI runs them: path checks and
# rule matching, the credential parser, URL rewriting, the audit and JSON writers, the token
# endpoint's answers and the configuration loader. CI runs each with proptest's default 256 cases
# (the path property 2,000); this runs CASES of each.
#
#   benches/fuzz.sh               # 100,000 cases each
#   CASES=1000000 benches/fuzz.sh
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
CASES=${CASES:-100000}
[[ $CASES =~ ^[1-9][0-9]*$ ]] || { echo "CASES must be a positive integer" >&2; exit 1; }
export PROPTEST_CASES=$CASES
filters=(
  admitted_paths_stay_under_the_prefix
  any_authorization_value_is_a_key_or_nothing
  basic_credentials_round_trip
  any_name_and_path_stay_one_line_and_round_trip
  any_token_endpoint_answer_is_a_token_or_an_error
  json_token_answers_are_checked
  any_key_and_value_is_loaded_or_refused_with_a_reason
  chunking_never_changes_the_result
  no_allowed_host_url_survives_and_other_hosts_are_untouched
  two_pointer_matching_agrees_with_the_reference
)
for filter in "${filters[@]}"; do
  echo "== $filter ($CASES cases)"
  name=$(cargo test --lib --locked -- --list 2>/dev/null | sed -n "s/^\(.*::$filter\): test$/\1/p")
  [[ -n $name ]] || { echo "no test named $filter" >&2; exit 1; }
  cargo test --lib --locked -- --exact --quiet "$name"
done
