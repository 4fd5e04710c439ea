from .translation_with_clean_set import (  # noqa: F401
    CleanSetError,
    TranslationWithCleanSetConfig,
    TranslationWithCleanSetTask,
)
