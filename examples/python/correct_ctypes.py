"""Corrects an answer through libaligner.so with ctypes: what a desktop app's scripting layer
(or any language with a C FFI) does. Streams the correction, and shows a cancel from another
thread. No aligner Python package is needed, only the library and its header's contract.

    python examples/python/correct_ctypes.py LIBALIGNER MODEL_DIR QUESTION ANSWER [--cancel-after N]
"""

from __future__ import annotations

import argparse
import ctypes
import json
import sys
import threading

OK = 0
PIECE_FN = ctypes.CFUNCTYPE(ctypes.c_bool, ctypes.c_char_p, ctypes.c_size_t, ctypes.c_void_p)


class LoadOptions(ctypes.Structure):
    _fields_ = [("threads", ctypes.c_uint32), ("provider", ctypes.c_char_p), ("device_id", ctypes.c_int32),
                ("template_name", ctypes.c_char_p), ("ort_lib", ctypes.c_char_p)]


class GenOptions(ctypes.Structure):
    _fields_ = [("max_new_tokens", ctypes.c_uint32), ("temperature", ctypes.c_float), ("top_k", ctypes.c_int32),
                ("top_p", ctypes.c_float), ("min_p", ctypes.c_float), ("repetition_penalty", ctypes.c_float),
                ("seed", ctypes.c_uint64), ("use_seed", ctypes.c_bool), ("disable_copy_drafts", ctypes.c_bool)]


class AlignerError(RuntimeError):
    def __init__(self, status: int, message: str):
        super().__init__(f"status {status}: {message}")
        self.status = status


class Library:
    """The C functions with their signatures."""

    def __init__(self, path: str):
        lib = ctypes.CDLL(path)
        p, vp = ctypes.c_void_p, ctypes.POINTER(ctypes.c_void_p)
        sigs = {
            "aligner_last_error": ([], ctypes.c_char_p),
            "aligner_version": ([], ctypes.c_char_p),
            "aligner_load_options_default": ([], LoadOptions),
            "aligner_gen_options_default": ([], GenOptions),
            "aligner_model_load": ([ctypes.c_char_p, ctypes.POINTER(LoadOptions), vp], ctypes.c_int),
            "aligner_model_free": ([p], None),
            "aligner_model_cancel": ([p], ctypes.c_int),
            "aligner_correct": ([p, ctypes.c_char_p, ctypes.c_size_t, ctypes.c_char_p, ctypes.c_size_t,
                                 ctypes.POINTER(GenOptions), PIECE_FN, p, vp], ctypes.c_int),
            "aligner_result_text": ([p, ctypes.POINTER(ctypes.c_size_t)], ctypes.c_void_p),
            "aligner_result_finish_reason": ([p], ctypes.c_char_p),
            "aligner_result_prompt_tokens": ([p], ctypes.c_size_t),
            "aligner_result_completion_tokens": ([p], ctypes.c_size_t),
            "aligner_result_free": ([p], None),
            "aligner_model_info": ([p, vp], ctypes.c_int),
            "aligner_string_free": ([p], None),
        }
        for name, (args, res) in sigs.items():
            fn = getattr(lib, name)
            fn.argtypes, fn.restype = args, res
        self.c = lib

    def check(self, status: int) -> None:
        if status != OK:
            raise AlignerError(status, self.c.aligner_last_error().decode())


class Model:
    """One loaded model; `correct` may run on one thread while `cancel` is called on another."""

    def __init__(self, lib: Library, folder: str, threads: int = 2):
        self.lib = lib
        opts = lib.c.aligner_load_options_default()
        opts.threads = threads
        self.ptr = ctypes.c_void_p()
        lib.check(lib.c.aligner_model_load(folder.encode(), ctypes.byref(opts), ctypes.byref(self.ptr)))

    def info(self) -> dict:
        out = ctypes.c_void_p()
        self.lib.check(self.lib.c.aligner_model_info(self.ptr, ctypes.byref(out)))
        try:
            return json.loads(ctypes.string_at(out.value).decode())
        finally:
            self.lib.c.aligner_string_free(out)

    def correct(self, question: bytes, answer: bytes, max_new_tokens: int = 48, on_piece=None) -> dict:
        gen = self.lib.c.aligner_gen_options_default()
        gen.max_new_tokens = max_new_tokens

        @PIECE_FN
        def piece(ptr, length, _user):
            return bool(on_piece(ctypes.string_at(ptr, length).decode())) if on_piece else True

        result = ctypes.c_void_p()
        self.lib.check(self.lib.c.aligner_correct(self.ptr, question, len(question), answer, len(answer),
                                                  ctypes.byref(gen), piece, None, ctypes.byref(result)))
        try:
            n = ctypes.c_size_t()
            text = ctypes.string_at(self.lib.c.aligner_result_text(result, ctypes.byref(n)), n.value).decode()
            return {"text": text, "finish_reason": self.lib.c.aligner_result_finish_reason(result).decode(),
                    "prompt_tokens": self.lib.c.aligner_result_prompt_tokens(result),
                    "completion_tokens": self.lib.c.aligner_result_completion_tokens(result)}
        finally:
            self.lib.c.aligner_result_free(result)

    def cancel(self) -> None:
        self.lib.check(self.lib.c.aligner_model_cancel(self.ptr))

    def close(self) -> None:
        self.lib.c.aligner_model_free(self.ptr)
        self.ptr = ctypes.c_void_p()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("library")
    ap.add_argument("model")
    ap.add_argument("question")
    ap.add_argument("answer")
    ap.add_argument("--cancel-after", type=int, default=0, help="cancel from another thread after N pieces")
    args = ap.parse_args(argv)
    lib = Library(args.library)
    model = Model(lib, args.model)
    pieces: list[str] = []
    enough = threading.Event()
    cancelled = threading.Event()

    def on_piece(text: str) -> bool:
        pieces.append(text)
        sys.stdout.write(text)
        sys.stdout.flush()
        if args.cancel_after and len(pieces) == args.cancel_after:
            enough.set()
            # Hold this piece until the cancel has landed, so the run stops at its next piece:
            # a copy-draft pass can stream a whole copied sentence within microseconds.
            cancelled.wait(timeout=60)
        return True

    out: dict = {}
    worker = threading.Thread(target=lambda: out.update(model.correct(args.question.encode(),
                                                                      args.answer.encode(), 96, on_piece)))
    worker.start()
    if args.cancel_after:
        enough.wait(timeout=60)
        model.cancel()  # from this thread, while the correction runs on the worker
        cancelled.set()
    worker.join()
    out["pieces"] = len(pieces)
    # A cancelled run also returns the piece it was cut off in; otherwise streamed == returned.
    out["streamed_is_prefix"] = out["text"].startswith("".join(pieces))
    out["streamed_equals_text"] = "".join(pieces) == out["text"]
    out["provider"] = model.info()["provider"]
    print("\n" + json.dumps(out))
    model.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
