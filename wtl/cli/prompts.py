"""The one terminal question-and-answer helper that both command-line tools use."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from wtl.errors import NoAnswer


def ask(
    question: str,
    flag: str,
    choices: Sequence[str] = (),
    check: Callable[[str], str | None] | None = None,
    read: Callable[[str], str] = input,
) -> str:
    """Ask until the answer is one of `choices` (case-insensitive) or passes `check`.

    `check` returns an error text for a bad answer, None for a good one. At end of
    input (a closed or exhausted stdin) it raises NoAnswer naming `flag`, so a script
    learns which flag to pass instead of hanging or seeing a traceback.
    """
    wanted = [c.upper() for c in choices]
    hint = f" [{'/'.join(wanted)}]" if wanted else ""
    while True:
        try:
            answer = read(f"{question}{hint}\n--> ").strip()
        except EOFError:
            raise NoAnswer(f"no answer to '{question}' (input ended): pass {flag} instead", flag) from None
        if wanted:
            if answer.upper() in wanted:
                return answer.upper()
            print(f"Please answer {' or '.join(wanted)}.")
            continue
        problem = check(answer) if check else (None if answer else "Please type an answer.")
        if problem is None:
            return answer
        print(problem)
