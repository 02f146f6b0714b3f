from trl_empg.cli import main

main()
