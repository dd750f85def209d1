"""Entry point of the single executable: the `berth` command line."""

from appliance.cli import main

if __name__ == "__main__":
    main()
