"""Generated-text evaluation: batched generation scored by the reference packages."""

import json

import numpy as np
import pytest
import sacrebleu

from tfllm.config import RunConfig
from tfllm.evaluation import evaluate_run
from tfllm.models import CausalLM, GPTBackbone
from tfllm.preprocessing import CausalLMPreprocessor, ChatTemplate
from tfllm.text_evaluation import evaluate_generation, write_generation_report
from tfllm.tokenizers import WordPieceTokenizer, save_tokenizer

WORDS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "yes", "no", "is", "it", "good", "bad", "?", ":"]
PROMPTS = ["is it good ?", "is it bad ?", "good ?", "bad ?", "it is good"]
REFERENCES = ["yes", "no", "yes", "no", "yes"]


@pytest.fixture(scope="module")
def lm():
    tokenizer = WordPieceTokenizer(WORDS)
    backbone = GPTBackbone.from_preset("gpt_tiny", vocabulary_size=len(WORDS), dropout=0.0)
    template = ChatTemplate(user="{content} :", assistant="{content}")
    preprocessor = CausalLMPreprocessor(tokenizer, 12, chat_template=template)
    return CausalLM(backbone, preprocessor=preprocessor)


def test_scores_equal_the_reference_packages_on_the_generated_answers(lm):
    report = evaluate_generation(lm, PROMPTS, REFERENCES, max_length=10, batch_size=2)
    outputs = report["outputs"]
    # Batching does not change the answers: each prompt alone gives the same.
    assert outputs == [lm.generate(p, max_length=10, strip_prompt=True).strip() for p in PROMPTS]
    scores = report["scores"]
    assert scores["bleu"] == pytest.approx(sacrebleu.corpus_bleu(outputs, [REFERENCES]).score)
    assert scores["chrf"] == pytest.approx(sacrebleu.corpus_chrf(outputs, [REFERENCES]).score)
    hits = [o == r for o, r in zip(outputs, REFERENCES, strict=True)]
    assert scores["exact_match"] == pytest.approx(np.mean(hits))
    assert scores["accuracy"] == pytest.approx(np.mean(hits))  # label-like references
    long = evaluate_generation(lm, PROMPTS[:2], ["a long answer of many words"] * 2, 10)
    assert "accuracy" not in long["scores"] and long["generation"]["sampler"] == "greedy"


def test_report_files(lm, tmp_path):
    report = evaluate_generation(lm, PROMPTS, REFERENCES, max_length=10, num_examples=2)
    folder = write_generation_report(report, tmp_path / "eval")
    assert json.loads((folder / "report.json").read_text())["scores"] == report["scores"]
    markdown = (folder / "report.md").read_text()
    assert "| prompt | reference | output |" in markdown and PROMPTS[1] in markdown
    assert PROMPTS[4] not in markdown  # two examples kept


def test_evaluate_run_of_an_sft_run(lm, tmp_path):
    data = tmp_path / "test.jsonl"
    records = [{"prompt": p, "response": r} for p, r in zip(PROMPTS, REFERENCES, strict=True)]
    records.append({"messages": [{"role": "user", "content": "good ?"},
                                 {"role": "assistant", "content": "yes"},
                                 {"role": "user", "content": "bad ?"},
                                 {"role": "assistant", "content": "no"}]})  # fmt: skip
    data.write_text("".join(json.dumps(r) + "\n" for r in records))
    run = tmp_path / "sft"
    config = RunConfig(
        task="causal_lm_sft", init_from=str(tmp_path), train_files=(str(data),),
        test_files=(str(data),), sequence_length=12, batch_size=4,
    )  # fmt: skip
    config.save(run / "config.json")
    save_tokenizer(lm.preprocessor.tokenizer, run / "tokenizer")
    lm.save(run / "model.keras")
    report = evaluate_run(run)
    assert report["split"] == "test" and report["examples_scored"] == 5
    assert report["multi_turn_skipped"] == 1
    expected = evaluate_generation(lm, PROMPTS, REFERENCES, batch_size=4)
    assert report["scores"] == pytest.approx(expected["scores"])
    assert (run / "evaluation" / "report.md").is_file()


def test_errors(lm):
    with pytest.raises(ValueError, match="5 prompts and 4 references"):
        evaluate_generation(lm, PROMPTS, REFERENCES[:4])
    with pytest.raises(TypeError, match="`references` must be a list of strings"):
        evaluate_generation(lm, PROMPTS[:1], [1])
    with pytest.raises(ValueError, match="must not be empty"):
        evaluate_generation(lm, [], [])
