"""A child process that runs ``pipeline`` commands on the Keras backend of its environment and
says, as JSON on its last line of output, each command's exit code and whether TensorFlow had
been imported after it.

``python -m tests.support.backend_child <stages.yaml> <commands.json>``: the commands are
lists of ``pipeline`` arguments, run in order in this one process (as a user's script would),
each followed by the check. The backend is chosen by ``KERAS_BACKEND``, as Keras does.
"""

from __future__ import annotations

import json
import sys
import warnings


def main() -> None:
    """Run the commands of ``argv[2]`` against ``argv[1]``; print the JSON report."""
    from pipeline.cli import main as pipeline

    config, commands = sys.argv[1], json.loads(sys.argv[2])
    warnings.simplefilter("ignore")
    report = []
    for arguments in commands:
        code = pipeline([*arguments, "-c", config])
        report.append({"command": arguments, "exit": code,
                       "tensorflow": "tensorflow" in sys.modules})
        sys.stdout.flush()
    import keras
    print(json.dumps({"backend": keras.backend.backend(), "commands": report}))


if __name__ == "__main__":
    main()
