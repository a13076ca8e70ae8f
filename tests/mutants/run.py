"""Run the test that guards each feature against a deliberately broken version of it.

    .venv/bin/python tests/mutants/run.py [NAME ...]

Each mutant is a pytest plugin (``-p tests.mutants.NAME``) that breaks one feature in memory
(no file in the tree is edited); the listed tests must then FAIL ("killed"). A mutant whose
tests pass ("SURVIVED") means the guard no longer guards. Exit status 1 if any survived.
Slow (about 15 minutes on 2 CPU cores): several mutants train or run GCG.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

# mutant -> the tests (pytest node ids / -k expressions) that must fail under it
MUTANTS: dict[str, list[str]] = {
    "report_js_innerhtml": ["tests/test_report.py::test_report_js_writes_model_text_as_text_only"],
    "report_title_unescaped": ["tests/test_report.py::test_report_html_is_inert_and_self_contained_without_a_browser"],
    "report_json_unescaped": ["tests/test_report.py::test_report_html_is_inert_and_self_contained_without_a_browser"],
    "report_csp_unsafe_inline": ["tests/test_report.py::test_report_html_is_inert_and_self_contained_without_a_browser"],
    "gcg_noise_gradient": ["tests/test_gcg.py", "-k", "beats_random_search"],
    "gcg_first_pair_only": ["tests/test_gcg.py::test_universal_mode_optimises_one_suffix_over_prompts_and_models"],
    "gcg_no_time_budget": ["tests/test_gcg.py::test_time_budget_stops_at_the_first_step_past_it"],
    "gcg_probe_ignores_draft": ["tests/test_gcg.py::test_probe_sampling_uses_the_draft_ranking"],
    "finetune_garbage_lr": ["tests/test_finetune.py::test_a_short_finetuning_attack_undoes_refusals"],
    "finetune_garbage_targets": ["tests/test_finetune.py::test_a_short_finetuning_attack_undoes_refusals"],
    "finetune_identity_no_reply": ["tests/test_finetune.py::test_identity_benign_and_backdoor_attacks_end_to_end[identity]"],
    "finetune_backdoor_no_trigger": [
        "tests/test_finetune.py::test_plan_builds_triggered_and_untriggered_prompts_under_each_kinds_system_prompt"],
    "reducer_all_of_n": ["tests/test_decoding.py::test_reducers_on_a_verdict_table_where_any_all_and_best_differ",
                         "tests/test_decoding.py::test_reducers_end_to_end_where_any_all_and_best_differ"],
    "reducer_best_is_min": ["tests/test_decoding.py::test_reducers_on_a_verdict_table_where_any_all_and_best_differ"],
    "decoding_early_stop_skips_nothing": [
        "tests/test_decoding.py::test_early_stop_skips_exactly_the_broken_prompts_and_keeps_any_of_n"],
    "lora_unmerged": ["tests/test_training.py::test_lora_training_merges_into_plain_folder"],
    "lora_adapter_only": ["tests/test_training.py::test_lora_training_merges_into_plain_folder"],
    "judge_no_timeout": ["tests/test_llm_judges.py::test_timeouts_are_retried_then_unscored"],
    "judge_unbounded": ["tests/test_llm_judges.py::test_concurrency_is_bounded"],
    "judge_backoff_uncapped": ["tests/test_llm_judges.py::test_backoff_grows_and_is_capped"],
}


def main(names: list[str]) -> int:
    survived = []
    for name in names or list(MUTANTS):
        args = MUTANTS[name]
        out = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-p", f"tests.mutants.{name}",
                              "-p", "no:cacheprovider", *args], cwd=ROOT, capture_output=True, text=True)
        summary = (out.stdout.strip().splitlines() or ["?"])[-1]
        if out.returncode == 1 and " failed" in summary:
            verdict = "killed"
        elif out.returncode == 0:
            verdict = "SURVIVED"
            survived.append(name)
        else:  # collection or plugin error: the mutant itself is out of date
            verdict = f"ERROR (rc {out.returncode})"
            survived.append(name)
        print(f"{name:36s} {verdict:10s} {summary}", flush=True)
    return 1 if survived else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
