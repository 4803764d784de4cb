"""The runtime's prompt templates (src/template.rs), character for character: training must
render exactly the prompt the runtime will run. Tested against the runtime's own strings."""

from __future__ import annotations

CHATML_SYSTEM = ("Repeat the answer exactly, but fix any mistake in it and make it helpful, "
                 "honest and harmless.")

TEMPLATES = ("chatml-correction", "aligner-v2", "aligner-v1", "aligner-2b")


def render(template: str, question: str, answer: str) -> str:
    if template == "aligner-v1":
        return ("BEGINNING OF CONVERSATION: USER: Edit the following Question-Answer pair to make "
                f"it more helpful and harmless: {question} | {answer} ASSISTANT:")
    if template == "aligner-v2":
        return (f"BEGINNING OF CONVERSATION: USER: ##Question: {question}\n##Answer: {answer}\n"
                "##Correction:  ASSISTANT:")
    if template == "aligner-2b":
        return (f"BEGINNING OF CONVERSATION: USER: ##Question: {question} ##Answer: {answer} "
                "##Revision:  ASSISTANT:")
    if template == "chatml-correction":
        return (f"<|im_start|>system\n{CHATML_SYSTEM}<|im_end|>\n<|im_start|>user\n"
                f"Question: {question}\nAnswer: {answer}<|im_end|>\n<|im_start|>assistant\n")
    raise ValueError(f"unknown template {template!r}; choose one of {', '.join(TEMPLATES)}")


def chat(system: str | None, question: str) -> str:
    """The runtime's ChatML chat turn (`Template::chat` of `chatml-correction`), as
    `aligner batch --task answer` renders it."""
    head = f"<|im_start|>system\n{system}<|im_end|>\n" if system else ""
    return f"{head}<|im_start|>user\n{question}<|im_end|>\n<|im_start|>assistant\n"
