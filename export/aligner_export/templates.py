"""Prompt template names shared with the Rust runtime (src/template.rs holds the strings)."""

TEMPLATES = ("aligner-v1", "aligner-v2", "aligner-2b", "chatml-correction")


def default_template(chat_template: str | None) -> str:
    """ChatML instruct models get the chat correction prompt; plain Llama-2 Aligners get v1."""
    if chat_template and "<|im_start|>" in chat_template:
        return "chatml-correction"
    return "aligner-v1"
