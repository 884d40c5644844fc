"""`python -m labeler` and the `labeler` console script."""


def main() -> None:
    from labeler.cli import app

    app()


if __name__ == "__main__":
    main()
