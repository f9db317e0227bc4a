from distill.core.architectures import main

if __name__ == "__main__":
    main()
